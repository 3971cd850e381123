"""The client's knobs, declared once: timeouts, retries, bans and pings."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.quantization import check_quantization


@dataclass
class ClientSettings:
    """How a client waits for, gives up on and measures servers. Every time is in seconds."""

    step_timeout: float = field(
        default=60.0,
        metadata={"help": "seconds without an answer to an inference step before its server counts as failed"},
    )
    request_timeout: float = field(
        default=120.0,
        metadata={"help": "seconds one forward or backward request may take before its server counts as failed"},
    )
    max_retries: int = field(
        default=5,
        metadata={"help": "server failures one step (or forward/backward) survives before the error surfaces"},
    )
    ban_base: float = field(default=15.0, metadata={"help": "seconds a server that failed is avoided, the first time"})
    ban_max: float = field(
        default=600.0, metadata={"help": "longest ban; each failure in a row doubles it from ban-base up to this"}
    )
    ping_period: float = field(default=30.0, metadata={"help": "seconds between background pings of known servers"})
    ping_timeout: float = field(
        default=2.0, metadata={"help": "seconds a ping may take; an unanswered ping counts as this round trip"}
    )
    rtt_smoothing: float = field(
        default=0.3, metadata={"help": "weight of the newest ping in the smoothed round trip (0-1]"}
    )
    dht_timeout: float = field(
        default=10.0, metadata={"help": "seconds a fresh DHT read may take before the last view is used instead"}
    )
    view_max_age: float = field(
        default=5.0,
        metadata={
            "help": "seconds a DHT view of the swarm is reused for routing before it is read again (0: read before "
            "every request); a server failure or a missing block makes the next route read it afresh"
        },
    )
    no_push: bool = field(
        default=False,
        metadata={
            "help": "carry each step's hidden states from server to server through the client, instead of letting "
            "each server pass its output straight to the next one (one trip back to the client per hop)"
        },
    )
    batched_replay: bool = field(
        default=False,
        metadata={
            "help": "after a failure, replay a session's history in a few large steps instead of step by step: "
            "much faster recovery of long sessions, but outputs may then differ from a run without failure in the "
            "last bits (and, rarely, a token)"
        },
    )
    spot_check_fraction: float = field(
        default=0.05,
        metadata={
            "help": "share of steps (and forward/backward requests) whose answers are compared with a second server "
            "of the same blocks, besides the first request to every server; 0 turns spot-checks off"
        },
    )
    spot_check_tolerance: float = field(
        default=0.1,
        metadata={
            "help": "largest per-token difference between two servers' answers, relative to their norm, that still "
            "counts as the same model (bfloat16 against float32 differs by about 0.03)"
        },
    )

    swarm_key: str | None = field(
        default=None,
        metadata={
            "help": "swarm key file of a private swarm (the swarm's owner makes it with `nectar dht --new-swarm-key`)"
        },
    )
    min_precision: str = field(
        default="nf4",
        metadata={
            "help": "least precise block weights this client accepts: nf4 (any server), int8 (int8 or unquantized) "
            "or none (unquantized servers only)"
        },
    )

    def __post_init__(self) -> None:
        check_quantization(self.min_precision, "min precision")
        for name in ("step_timeout", "request_timeout", "ban_base", "ban_max", "ping_period", "ping_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.view_max_age < 0:
            raise ValueError(f"view max age must be 0 or more, got {self.view_max_age}")
        if self.max_retries < 0:
            raise ValueError(f"max retries must be 0 or more, got {self.max_retries}")
        if not 0 <= self.spot_check_fraction <= 1:
            raise ValueError(f"spot check fraction must be in [0, 1], got {self.spot_check_fraction}")
        if not 0 < self.spot_check_tolerance < 2:
            raise ValueError(f"spot check tolerance must be in (0, 2), got {self.spot_check_tolerance}")
        if not 0 < self.rtt_smoothing <= 1:
            raise ValueError(f"rtt smoothing must be in (0, 1], got {self.rtt_smoothing}")
