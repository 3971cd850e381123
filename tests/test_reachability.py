"""Addresses and reachability without namespaces: what a server listens on and announces, the record's dialable
addresses, the multiaddr bytes p2pd reads, relayed servers routed last, and a dial-back between real peers on
127.0.0.1 (the NAT cases run in network namespaces: test_nat.py)."""

from __future__ import annotations

import asyncio

import pytest
from hivemind.p2p import P2P

from agent.api.models import ServerStatus
from agent.cli_agent import reachability_text
from agent.settings import SwarmSettings
from engine.client.routing import inference_route
from engine.reachability import DialBack, _MaddrBytes, ask_dial_back, circuit_addresses, direct_addresses
from engine.records import ServerRecord, ServerState
from engine.rejoin import peer_of
from engine.server.network import announce_maddrs, should_check
from engine.server.settings import ServerSettings

RELAY = "/ip4/203.0.113.10/tcp/31101/p2p/QmSK69t29qhBDfjDyZh9s9GYkknvisuhqFGZ8x1wBbxJkR"


def settings(**values) -> ServerSettings:
    return ServerSettings(model="m", initial_peers=[RELAY], **values)


def test_announced_address_needs_a_fixed_port() -> None:
    assert announce_maddrs(settings()) is None
    assert announce_maddrs(settings(announce_host="198.51.100.7", port=31330)) == ["/ip4/198.51.100.7/tcp/31330"]
    assert announce_maddrs(settings(announce_host="198.51.100.7", port=1, announce_port=80)) == [
        "/ip4/198.51.100.7/tcp/80"
    ]
    assert announce_maddrs(settings(announce_host="home.example", port=5)) == ["/dns/home.example/tcp/5"]
    with pytest.raises(ValueError, match="fixed --port"):
        announce_maddrs(settings(announce_host="198.51.100.7"))
    with pytest.raises(ValueError, match="needs --announce-host"):
        announce_maddrs(settings(announce_port=80))


def test_reachability_is_checked_beyond_loopback_only() -> None:
    assert not should_check(settings())  # 127.0.0.1: the local swarm
    assert should_check(settings(host="0.0.0.0"))
    assert should_check(settings(reachability="check"))
    assert not should_check(settings(host="0.0.0.0", reachability="skip"))
    assert not should_check(ServerSettings(model="m", new_swarm=True, host="0.0.0.0"))  # nobody to ask
    with pytest.raises(ValueError, match="auto, check or skip"):
        should_check(settings(reachability="sometimes"))


def test_agent_listens_on_every_interface_in_a_named_swarm() -> None:
    assert SwarmSettings().listen_host() == "127.0.0.1"
    assert SwarmSettings(name="public", initial_peers=[RELAY]).listen_host() == "0.0.0.0"
    assert SwarmSettings(name="public", host="192.0.2.5").listen_host() == "192.0.2.5"


def test_addresses() -> None:
    assert circuit_addresses([RELAY, "/ip4/203.0.113.9/tcp/1"]) == [RELAY + "/p2p-circuit"]
    visible = ["/ip4/127.0.0.1/tcp/5/p2p/Qm1", "/ip4/192.0.2.2/tcp/5/p2p/Qm1", RELAY + "/p2p-circuit"]
    assert direct_addresses(visible) == ["/ip4/192.0.2.2/tcp/5"]
    assert peer_of(RELAY) == RELAY.rsplit("/", 1)[1] and peer_of("/ip4/203.0.113.9/tcp/1") is None


def test_circuit_multiaddr_bytes_carry_the_plain_multihash() -> None:
    """p2pd reads /p2p/ as a multihash: code 421, its length, the hash; then p2p-circuit (code 290, no value)."""
    raw = _MaddrBytes(RELAY + "/p2p-circuit").to_bytes()
    assert raw.startswith(bytes.fromhex("04cb00710a06797d"))  # /ip4/203.0.113.10/tcp/31101
    assert raw[8:11] == bytes.fromhex("a50322") and raw.endswith(bytes.fromhex("a202")) and len(raw) == 8 + 3 + 34 + 2


def test_records_carry_dialable_addresses() -> None:
    relayed = ServerRecord("a", 0, 2, ServerState.ONLINE, maddrs=(RELAY + "/p2p-circuit",))
    assert ServerRecord.from_dict(relayed.to_dict()) == relayed and relayed.relayed
    direct = ServerRecord("b", 0, 2, ServerState.ONLINE, maddrs=("/ip4/203.0.113.11/tcp/5/p2p/b",))
    assert not direct.relayed and not ServerRecord("c", 0, 2, ServerState.ONLINE).relayed
    old = {key: value for key, value in direct.to_dict().items() if key != "maddrs"}
    assert ServerRecord.from_dict(old).maddrs == ()  # an older peer's record still reads


def test_direct_servers_are_preferred() -> None:
    relayed = ServerRecord("relayed", 0, 2, ServerState.ONLINE, free_cache_tokens=100, maddrs=(RELAY + "/p2p-circuit",))
    direct = ServerRecord("direct", 0, 2, ServerState.ONLINE, free_cache_tokens=100)
    blocks = {0: [relayed, direct], 1: [relayed, direct]}
    rtts = {"relayed": 0.02, "direct": 0.05}  # the relayed one even answers pings a little faster
    route = inference_route(blocks, 0, 2, rtts, default_rtt=1.0, banned=(), excluded=set(), cache_tokens=10)
    assert [hop.peer_id for hop in route] == ["direct"]


def test_a_peer_dials_back_on_loopback() -> None:
    """A real DialBack between two peers: the listened address is reached, a closed port is not."""

    async def scenario() -> tuple[bool | None, bool | None]:
        checker = await P2P.create()
        await DialBack().add_p2p_handlers(checker)
        peers = [str(maddr) for maddr in await checker.get_visible_maddrs()]
        asker = await P2P.create(initial_peers=peers)
        try:
            own = [str(maddr).split("/p2p/")[0] for maddr in await asker.get_visible_maddrs()]
            checker_id = checker.peer_id.to_base58()
            return await ask_dial_back(asker, own, [checker_id]), await ask_dial_back(
                asker, ["/ip4/127.0.0.1/tcp/9"], [checker_id]
            )
        finally:
            await asker.shutdown()
            await checker.shutdown()

    reached, refused = asyncio.run(scenario())
    assert reached is True and refused is False


def test_status_words_for_reachability() -> None:
    assert reachability_text("direct", 12.4) == "directly, 12 ms round trip to the swarm"
    assert reachability_text("relay", None) == "through a relay"
    assert reachability_text(None, None) == "not checked (local swarm)"
    assert ServerStatus(reachability="relay", swarm_rtt_ms=3.0).reachability == "relay"
