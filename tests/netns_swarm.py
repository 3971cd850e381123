"""A swarm spread over ``netns_topology``'s namespaces: bootstrap nodes, servers, and a client process in home1.

Not a test module; used by tests/test_nat.py and benchmarks/nat_generation.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TEST_ENV
from hivemind.p2p import P2P, PeerID
from netns_topology import Topology
from swarm_helpers import wait_ready

from agent.local_swarm import Child, LocalSwarm

BOOTSTRAP_PORTS = (31101, 31102, 31103, 31104)
SERVER_ARGS = ("--host", "0.0.0.0", "--throughput", "100", "--announce-period", "2", "--record-ttl", "8")
PROMPT = [5, 17, 42, 99, 3, 64, 7, 100]
NEW_TOKENS = 12
CLIENT = str(Path(__file__).with_name("netns_client.py"))


class Internet:
    """The topology, the swarm's processes in their namespaces, and a way to run the client in home1."""

    def __init__(self, topology: Topology, model: Path, keys: Path):
        self.topology, self.model, self.keys = topology, model, keys
        env = {**TEST_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.swarm = LocalSwarm(str(model), [], env=env, start_timeout=300, log_dir=keys.parent / "logs")
        self.bootstraps: list[Child] = []
        public = topology.address("public0")
        self.initial_peers = []  # fixed ports and identities: known before anything starts, the same after a restart
        for index, port in enumerate(BOOTSTRAP_PORTS):
            P2P.generate_identity(str(keys / f"b{index}"))
            peer = PeerID.from_identity((keys / f"b{index}").read_bytes()).to_base58()
            self.initial_peers.append(f"/ip4/{public}/tcp/{port}/p2p/{peer}")

    def start_bootstraps(self) -> list[Child]:
        """The first bootstrap node, then the others joining it (p2pd exits when no bootstrap peer answers)."""
        self.bootstraps = []
        for index, port in enumerate(BOOTSTRAP_PORTS):
            args = ["dht", "--host", "0.0.0.0", "--port", str(port), "--identity-path", str(self.keys / f"b{index}")]
            args += ["--initial-peers", self.initial_peers[0]] if index else []
            self.bootstraps.append(self.swarm._spawn(f"bootstrap{index}", args, self.topology.command("public0")))
            if not index:
                wait_ready(self.bootstraps, 60)
        return self.bootstraps

    def stop_bootstraps(self) -> None:
        for child in self.bootstraps:
            child.process.kill()
            child.process.wait(10)

    def server(self, role: str, blocks: str, *extra: str) -> Child:
        """A server started in ``role``'s namespace; wait for it with ``wait_ready``."""
        args = ["serve", str(self.model), "--initial-peers", *self.initial_peers, "--blocks", blocks]
        child = self.swarm._spawn(
            f"server{len(self.swarm.servers)}-{role}-{blocks.replace(':', '-')}",
            [*args, *SERVER_ARGS, *extra],
            self.topology.command(role),
        )
        self.swarm.servers.append(child)
        return child

    def client(self, *args: str, timeout: float = 120.0) -> dict:
        command = self.topology.command("home1", sys.executable, CLIENT, args[0], str(self.model))
        done = subprocess.run(
            [*command, ",".join(self.initial_peers), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.swarm.env},
        )
        if done.returncode != 0:
            raise AssertionError(f"the client failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        self.swarm.servers.extend(self.bootstraps)  # LocalSwarm.stop ends every child it knows
        self.swarm.stop()
