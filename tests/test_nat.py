"""Servers behind NAT join, are reached through relays, serve, and the swarm survives its bootstrap nodes restarting.

Real processes in Linux network namespaces (``netns_topology``): a public segment with the swarm's bootstrap nodes
(public0) and a public server (public1), a home behind a masquerading router with a volunteer server (home0), and a
second NAT'd home with the client (home1). Nothing is mocked; only documentation address ranges are used, and every
namespace is deleted by the fixture. Skipped where namespaces cannot be made (not root, no ``ip``/``nft``).

Four bootstrap nodes, because libp2p's autorelay reserves relay slots at once only when it knows four candidate
relays (with fewer it waits minutes); the swarm's bootstrap peers are the relays a NAT'd server uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from netns_swarm import NEW_TOKENS, PROMPT, Internet
from netns_topology import Topology, unavailable_reason
from reference import greedy_reference, load_reference, make_lively_checkpoint
from swarm_helpers import wait_ready

pytestmark = pytest.mark.slow
FORWARDED_PORT = 31300

_SKIP = unavailable_reason()
if _SKIP is not None:
    pytestmark = [pytestmark, pytest.mark.skip(reason=f"cannot build the NAT topology: {_SKIP}")]


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
        public_address = topology.forward_port(0, FORWARDED_PORT)  # a volunteer who forwarded a port
        forwarded_args = ("--port", str(FORWARDED_PORT), "--announce-host", public_address, "--dht-prefix", "other")
        net.forwarded = net.server("home0", "0:4", *forwarded_args)
        wait_ready([*bootstraps, net.public, net.home, net.forwarded], 300)  # generous: 9 processes start at once
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


def test_a_forwarded_port_is_reached_directly(internet: Internet) -> None:
    """Behind the same NAT, with its port forwarded and the router's address announced: dialed back directly."""
    assert internet.forwarded.ready["reachability"] == "direct", internet.forwarded.tail()
    router = internet.topology.address("router0")
    assert internet.forwarded.ready["announced"][0].startswith(f"/ip4/{router}/tcp/{FORWARDED_PORT}/p2p/")


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
    """Every bootstrap node killed and restarted: the servers find the swarm again by themselves and serve.

    The servers greet the bootstrap peers every 10 s, so their records are found again within seconds, the NAT'd one's
    too. Generation is checked through the directly reachable servers: a relayed server is dialed again only once
    libp2p's autorelay has reserved slots on the restarted relays, which takes it minutes (its own timers).
    """
    internet.stop_bootstraps()
    time.sleep(3)
    wait_ready(internet.start_bootstraps(), 60)
    everyone = {internet.public.ready["peer_id"], internet.home.ready["peer_id"]}
    deadline = time.monotonic() + 120
    while True:
        try:
            view = internet.client("view", "4")
            if {record["peer_id"] for records in view.values() for record in records} == everyone:
                break
        except AssertionError:  # the client found no bootstrap peer answering yet
            pass
        assert time.monotonic() < deadline, "the servers did not rejoin the restarted bootstrap nodes"
        time.sleep(2)
    answer = internet.client("generate", ",".join(map(str, PROMPT)), str(NEW_TOKENS), "other")  # the forwarded one
    assert answer["tokens"] == greedy_reference(load_reference(internet.model), PROMPT, NEW_TOKENS)
    assert [hop.split("@")[1] for hop in answer["route"]] == [internet.forwarded.ready["peer_id"][-8:]]
    assert all(child.process.poll() is None for child in (internet.public, internet.home, internet.forwarded))
