"""Generation through a volunteer behind NAT, relayed and direct (a forwarded port), against the loopback swarm.

One run, three rows, same tiny model (4 blocks, width 64: the network and the hops dominate) and the same greedy
generation of ``--new-tokens`` tokens, best of ``--repeats``:
- loopback: a DHT node and two servers on 127.0.0.1, the client in the same namespace;
- relayed: network namespaces (tests/netns_topology.py): blocks 0:2 on a public server, 2:4 on a server behind a
  NAT router that peers reach through circuit relays, the client behind a second NAT;
- direct: the same, but the home server's port is forwarded on its router and its public address announced.
Every row is measured by the same client program, a new process per run (connecting untimed). Prints tokens/s and
the ratio to loopback. Needs root, ``ip`` and ``nft``. The namespaces' links have no delay
(the kernel has no netem here): the rows measure the cost of the relay hop and NAT, not a real internet's latency.

    sudo python benchmarks/nat_generation.py [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TEST_ENV  # noqa: E402
from netns_swarm import CLIENT, PROMPT, Internet  # noqa: E402
from netns_topology import Topology, unavailable_reason  # noqa: E402
from reference import make_lively_checkpoint  # noqa: E402
from swarm_helpers import wait_ready  # noqa: E402

from agent.local_swarm import LocalSwarm  # noqa: E402

FORWARDED_PORT = 31300


def loopback(model: Path, new_tokens: int, repeats: int) -> float:
    """Tokens/s on 127.0.0.1, measured by the same client program as the other rows (a new process per run)."""
    with LocalSwarm(str(model), [(0, 2), (2, 4)], server_args=["--throughput", "100"], env=TEST_ENV) as swarm:
        best = 0.0
        for _ in range(repeats):
            command = [sys.executable, CLIENT, "generate", str(model), ",".join(swarm.initial_peers)]
            done = subprocess.run(
                [*command, ",".join(map(str, PROMPT)), str(new_tokens)],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, **TEST_ENV, "PYTHONPATH": str(ROOT)},
            )
            if done.returncode != 0:
                raise RuntimeError(f"the loopback client failed:\n{done.stderr[-2000:]}")
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            best = max(best, len(answer["tokens"]) / answer["seconds"])
        return best


def through_nat(model: Path, keys: Path, new_tokens: int, repeats: int) -> dict[str, float]:
    """Tokens/s with the home server relayed, then with its port forwarded; best of ``repeats`` client runs each."""
    topology = Topology().build()
    net = Internet(topology, model, keys)
    rates: dict[str, float] = {}
    try:
        bootstraps = net.start_bootstraps()
        public = net.server("public1", "0:2")
        home = net.server("home0", "2:4")
        wait_ready([*bootstraps, public, home], 300)
        print(f"home server: reachability {home.ready['reachability']}", file=sys.stderr)
        rates["relayed"] = _best(net, new_tokens, repeats)
        home.process.terminate()
        home.process.wait(60)
        address = topology.forward_port(0, FORWARDED_PORT)
        forwarded = net.server("home0", "2:4", "--port", str(FORWARDED_PORT), "--announce-host", address)
        wait_ready([forwarded], 300)
        print(f"forwarded server: reachability {forwarded.ready['reachability']}", file=sys.stderr)
        time.sleep(10)  # the stopped server's records say offline; let the client see only the new one
        rates["direct"] = _best(net, new_tokens, repeats)
    finally:
        net.stop()
        topology.remove()
    return rates


def _best(net: Internet, new_tokens: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):  # each run is a new client process: connecting is not timed, generating is
        answer = net.client("generate", ",".join(map(str, PROMPT)), str(new_tokens))
        best = max(best, len(answer["tokens"]) / answer["seconds"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot build the NAT topology: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        model = make_lively_checkpoint(Path(tmp) / "tiny-llama", "llama")
        keys = Path(tmp) / "keys"
        keys.mkdir()
        base = loopback(model, args.new_tokens, args.repeats)
        rates = through_nat(model, keys, args.new_tokens, args.repeats)
        base = max(base, loopback(model, args.new_tokens, args.repeats))  # before and after: the machine drifts
    print(f"{'path':<10} {'tokens/s':>9} {'vs loopback':>12}")
    print(f"{'loopback':<10} {base:9.1f} {1.0:12.2f}")
    for name, rate in rates.items():
        print(f"{name:<10} {rate:9.1f} {rate / base:12.2f}")


if __name__ == "__main__":
    main()
