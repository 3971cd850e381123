"""Servers behind NAT join, are reached through relays, serve, and the swarm survives its bootstrap nodes restarting.

Real processes in Linux network namespaces (``netns_topology``): a public segment with the swarm's bootstrap nodes
(public0) and a public server (public1), a home behind a masquerading router with a volunteer server (home0), and a
second NAT'd home with the client (home1). Nothing is mocked; only documentation address ranges are used, and every
namespace is deleted by the fixture. Skipped where namespaces cannot be made (not root, no ``ip``/``nft``).

Four bootstrap nodes, because libp2p's autorelay reserves relay slots at once only when it knows four candidate
relays (with fewer it waits minutes); the swarm's bootstrap peers are the relays a NAT'd server uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_ENV
from hivemind.p2p import P2P, PeerID
from netns_topology import Topology, unavailable_reason
from reference import greedy_reference, load_reference, make_lively_checkpoint
from swarm_helpers import wait_ready

from agent.local_swarm import Child, LocalSwarm

pytestmark = pytest.mark.slow

_SKIP = unavailable_reason()
if _SKIP is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"cannot build the NAT topology: {_SKIP}")]

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
        self.swarm = LocalSwarm(str(model), [], env=env, start_timeout=120, log_dir=keys.parent / "logs")
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
        child = self.swarm._spawn(f"server-{role}-{blocks}", [*args, *SERVER_ARGS, *extra], self.topology.command(role))
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


@pytest.fixture(scope="module")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Internet]:
    """Everything starts at once: bootstrap nodes, the public and the NAT'd server, and one that may not relay."""
    root = tmp_path_factory.mktemp("nat")
    model = make_lively_checkpoint(root / "tiny-llama", "llama")
    keys = root / "keys"
    keys.mkdir()
    topology = Topology().build()
    net = Internet(topology, model, keys)
    try:
        bootstraps = net.start_bootstraps()
        net.public = net.server("public1", "0:2")
        net.home = net.server("home0", "2:4")
        net.unreachable = net.server("home0", "0:4", "--no-relay", "--port", "31200")
        wait_ready([*bootstraps, net.public, net.home], 120)
        yield net
    finally:
        net.stop()
        topology.remove()


def test_nat_server_serves_through_a_relay(internet: Internet) -> None:
    """The public server is dialed directly, the NAT'd one through a relay; greedy text equals one process's."""
    assert internet.public.ready["reachability"] == "direct"
    assert internet.home.ready["reachability"] == "relay", internet.home.tail()
    assert internet.home.ready["announced"] and all("/p2p-circuit" in a for a in internet.home.ready["announced"])
    assert internet.public.ready["announced"][0].startswith(f"/ip4/{internet.topology.address('public1')}/tcp/")
    assert internet.public.ready["swarm_rtt_ms"] is not None and internet.home.ready["swarm_rtt_ms"] is not None
    answer = internet.client("generate", ",".join(map(str, PROMPT)), str(NEW_TOKENS))
    assert answer["tokens"] == greedy_reference(load_reference(internet.model), PROMPT, NEW_TOKENS)
    assert [hop.split("@")[1] for hop in answer["route"]] == [
        internet.public.ready["peer_id"][-8:],
        internet.home.ready["peer_id"][-8:],
    ]


def test_bench_tells_a_home_behind_nat_it_is_reached_through_a_relay(internet: Internet) -> None:
    assert internet.client("reachability") == {"reachability": "relay", "detail": ""}


def test_unreachable_server_says_why_and_announces_nothing(internet: Internet) -> None:
    """Behind NAT and told not to use relays: it names the port to forward, exits, and no record of it appears."""
    child = internet.unreachable
    assert child.process.wait(60) == 2
    output = child.tail()
    assert "cannot be reached" in output and "Forward TCP port 31200" in output and "Nothing was announced" in output
    view = internet.client("view", "4")
    peers = {record["peer_id"] for records in view.values() for record in records}
    assert peers == {internet.public.ready["peer_id"], internet.home.ready["peer_id"]}


def test_servers_rejoin_when_the_bootstrap_nodes_return(internet: Internet) -> None:
    """Every bootstrap node killed and restarted: the servers find the swarm again by themselves and serve."""
    internet.stop_bootstraps()
    time.sleep(3)
    wait_ready(internet.start_bootstraps(), 60)
    deadline = time.monotonic() + 150
    while True:  # the servers greet the bootstrap peers every 10 s; a relayed one must also reserve its relays again
        try:
            answer = internet.client("generate", ",".join(map(str, PROMPT)), str(NEW_TOKENS))
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    assert answer["tokens"] == greedy_reference(load_reference(internet.model), PROMPT, NEW_TOKENS)
    assert internet.public.process.poll() is None and internet.home.process.poll() is None
