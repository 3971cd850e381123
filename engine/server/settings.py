"""Every knob of a server, declared once: the ``nectar serve`` options are derived from these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.server.limits import RequestLimits


@dataclass
class ServerSettings:
    """Every knob of a server; the CLI is derived from these fields (``help`` metadata)."""

    model: str = field(metadata={"help": "model directory, .gguf file, cached repo id, or alias"})
    initial_peers: list[str] = field(default_factory=list, metadata={"help": "multiaddrs of DHT peers to join"})
    new_swarm: bool = field(default=False, metadata={"help": "start a new swarm instead of joining one"})
    blocks: str | None = field(
        default=None, metadata={"help": "span to serve as START:END (default: chosen by the server, see --num-blocks)"}
    )
    num_blocks: int | None = field(
        default=None,
        metadata={"help": "without --blocks: how many blocks to serve (default: as many as fit --memory-budget)"},
    )
    memory_budget: float | None = field(
        default=None,
        metadata={
            "help": "GiB for blocks and attention caches when choosing --num-blocks (default: half the available "
            "RAM on CPU, the free GPU memory on a GPU)"
        },
    )
    throughput: str = field(
        default="auto",
        metadata={
            "help": "auto (measure once, then reuse the cached measurement), eval (measure now), or the number "
            "of tokens/s this server adds to each of its blocks, announced as given"
        },
    )
    balance_quality: float = field(
        default=0.75,
        metadata={
            "help": "without --blocks: move only if that raises the swarm's bottleneck throughput above "
            "current / q (or the bottleneck is below q x the mean); in (0, 1], 1 moves for any gain"
        },
    )
    rebalance_period: float = field(
        default=120.0, metadata={"help": "without --blocks: mean seconds between rebalancing checks (0: never move)"}
    )
    max_join_delay: float = field(
        default=5.0,
        metadata={"help": "without --blocks: longest random wait before choosing a span, so that joins spread"},
    )
    port: int = field(default=0, metadata={"help": "TCP port to listen on (0: any free port)"})
    host: str = field(
        default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0: every interface, to serve others)"}
    )
    announce_host: str | None = field(
        default=None,
        metadata={
            "help": "public address to announce instead of the listened ones, e.g. the router's when its --port is "
            "forwarded to this machine"
        },
    )
    announce_port: int | None = field(
        default=None, metadata={"help": "with --announce-host: the public port, if the router maps another"}
    )
    reachability: str = field(
        default="auto",
        metadata={
            "help": "ask a peer to dial this server back before announcing: check, skip, or auto (check unless "
            "listening on loopback only)"
        },
    )
    no_relay: bool = field(
        default=False,
        metadata={"help": "when peers cannot dial this server, fail instead of serving through the swarm's relays"},
    )
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:N or mps"})
    dtype: str = field(
        default="auto",
        metadata={"help": "float32, bfloat16, float16, or auto: the checkpoint's own (float16 where bfloat16 is not)"},
    )
    quant: str = field(
        default="none",
        metadata={
            "help": "quantize the blocks' linear layers as they load: none, int8 (LLM.int8) or nf4 (4-bit), "
            "with bitsandbytes; about 0.5 and 0.3 of the float32 weight memory"
        },
    )
    dht_prefix: str | None = field(default=None, metadata={"help": "swarm name of the model (default: derived)"})
    cache_tokens: int = field(default=16384, metadata={"help": "attention-cache budget, in tokens of the span"})
    max_session_length: int = field(default=2048, metadata={"help": "longest session a client may open (tokens)"})
    max_request_tokens: int = field(default=8192, metadata={"help": "batch x tokens a forward/backward may carry"})
    announce_period: float = field(default=30.0, metadata={"help": "seconds between DHT record refreshes"})
    record_ttl: float = field(default=90.0, metadata={"help": "seconds a record lives without refresh"})
    session_idle_timeout: float = field(
        default=300.0,
        metadata={"help": "seconds an inference session may wait for its next step before the server closes it"},
    )
    max_sessions: int = field(default=256, metadata={"help": "open inference sessions of all clients together"})
    max_sessions_per_peer: int = field(default=16, metadata={"help": "open inference sessions of one client"})
    peer_cache_share: float = field(
        default=0.5, metadata={"help": "largest share (0-1] of the attention-cache budget one client may hold"}
    )
    max_queued_jobs: int = field(
        default=64, metadata={"help": "compute jobs (steps, forwards, backwards) waiting at once; more are refused"}
    )
    max_jobs_per_peer: int = field(default=16, metadata={"help": "compute jobs of one client queued or running"})
    max_queued_mb: int = field(
        default=512, metadata={"help": "MiB of request tensors that queued or running compute jobs may hold together"}
    )
    training_max_wait: float = field(
        default=1.0,
        metadata={"help": "seconds a forward/backward waits behind inference steps before it runs next anyway"},
    )
    job_timeout: float = field(
        default=120.0, metadata={"help": "seconds a compute job may wait in the queue before it is dropped unrun"}
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch threads (default: all cores)"})
    identity_path: str | None = field(default=None, metadata={"help": "private key file: a stable peer id"})
    swarm_key: str | None = field(
        default=None, metadata={"help": "swarm key file of a private swarm (from `nectar dht --new-swarm-key`)"}
    )
    drain_timeout: float = field(
        default=30.0, metadata={"help": "seconds a leaving server waits for the steps in flight before it exits"}
    )
    no_batching: bool = field(
        default=False,
        metadata={
            "help": "compute every inference step alone instead of running one-token steps of different sessions "
            "that wait at the same time as one batched forward"
        },
    )
    simulated_delay: float = field(
        default=0.0, metadata={"help": "seconds added to every RPC answer; for testing and simulating slow links only"}
    )
    link_latency: float = field(
        default=0.0,
        metadata={
            "help": "seconds of one-way latency added to every message this server receives and sends, as over a "
            "wide-area link; for benchmarks (engine/server/link.py)"
        },
    )
    link_mbps: float = field(
        default=0.0,
        metadata={"help": "bandwidth in Mbit/s of each direction of the simulated link (0: unlimited); benchmarks"},
    )
    adapters: list[str] = field(
        default_factory=list, metadata={"help": "PEFT LoRA adapter directories to serve (named by directory)"}
    )
    training_cache_mb: int = field(
        default=1024, metadata={"help": "MiB of activations kept from a forward for its backward (0: recompute)"}
    )
    control_dir: str | None = field(
        default=None,
        metadata={"help": "directory of the throttle file this server follows and the status file it writes"},
    )

    def limits(self) -> RequestLimits:
        """The request limits the handler enforces (a one-line ValueError for one out of range)."""
        if not 0 < self.peer_cache_share <= 1:
            raise ValueError(f"--peer-cache-share must be in (0, 1], got {self.peer_cache_share}")
        return RequestLimits(
            max_sessions=self.max_sessions,
            max_sessions_per_peer=self.max_sessions_per_peer,
            max_jobs_per_peer=self.max_jobs_per_peer,
            max_queued_bytes=self.max_queued_mb * 2**20,
            session_idle_timeout=self.session_idle_timeout,
        )


def settings_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(ServerSettings))
