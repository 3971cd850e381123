"""On a real local swarm, a peer that forges DHT records changes nothing.

A DHT node and two ``nectar serve`` processes run on 127.0.0.1; a forger joins the DHT as a full node that checks
nothing itself, and stores records under the servers' ids (offline with a far-future expiry, joining, absurd
throughput), plain values over the block keys, and the servers' own signed records replayed under other blocks. Every
honest node refuses them; what a client reads, and so routing and the rebalancing decisions, are exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
from conftest import TEST_ENV
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time
from swarm_helpers import wait_covered

from agent.local_swarm import LocalSwarm
from engine.balance import ServerPlacement
from engine.client.routing import inference_route, make_route
from engine.client.swarm import SwarmConnection
from engine.records import ServerRecord, ServerState, block_key, default_dht_prefix
from engine.server import placement

pytestmark = pytest.mark.slow

NUM_BLOCKS = 4
SPANS = [(0, 2), (2, 4)]


class Swarm:
    def __init__(self, local: LocalSwarm, client: SwarmConnection):
        self.local, self.client = local, client
        self.peers = [child.ready["peer_id"] for child in local.servers]

    def view(self) -> dict[int, list[ServerRecord]]:
        return self.client.run(self.client.read_blocks(0, NUM_BLOCKS), 60)


@pytest.fixture(scope="module")
def swarm(tiny_checkpoints) -> Iterator[Swarm]:
    path = tiny_checkpoints("llama")
    args = ["--announce-period", "2", "--throughput", "100"]
    with LocalSwarm(str(path), SPANS, server_args=args, env=TEST_ENV) as local:
        client = SwarmConnection(local.initial_peers, default_dht_prefix(str(path)))
        try:
            wait_covered(client, NUM_BLOCKS)
            yield Swarm(local, client)
        finally:
            client.close()


def summary(blocks: dict[int, list[ServerRecord]]) -> dict[int, list[tuple]]:
    """What routing and rebalancing read from a view (not the free cache, which moves with the servers' load)."""
    return {
        index: sorted((r.peer_id, r.start, r.end, r.state, r.throughput, r.inference_rps) for r in records)
        for index, records in blocks.items()
    }


def decisions(blocks: dict[int, list[ServerRecord]], peers: list[str]) -> dict:
    """Every choice a view drives: a training and an inference route, a joining span, each server's move."""
    spans = [ServerPlacement(peer, *SPANS[index], 100.0) for index, peer in enumerate(peers)]
    return {
        "training": [(hop.peer_id, hop.start, hop.end) for hop in make_route(blocks, 0, NUM_BLOCKS)],
        "inference": [(hop.peer_id, hop.start, hop.end) for hop in inference_route(blocks, 0, NUM_BLOCKS, {}, 0.1)],
        "join": placement.choose_join_start(blocks, NUM_BLOCKS, 2, 100.0, "newcomer"),
        "moving": placement.moving_peers(blocks),
        "moves": [placement.decide_move(blocks, me, NUM_BLOCKS, 0.75) for me in spans],
    }


async def start_forger(swarm: Swarm) -> tuple[P2P, DHTNode]:
    """A full DHT node without a validator: it stores anything, and serves it to readers."""
    initial = swarm.local.initial_peers
    p2p = await P2P.create(initial_peers=initial)
    return p2p, await DHTNode.create(p2p=p2p, initial_peers=initial, client_mode=False)


async def forge(p2p: P2P, node: DHTNode, swarm: Swarm, prefix: str) -> dict[str, list]:
    """Store every forgery through the DHT (which keeps it in the forger's own storage too) and straight to the
    bootstrap node; the bootstrap node's answers."""
    initial = swarm.local.initial_peers
    bootstrap = PeerID.from_base58(initial[0].rsplit("/p2p/", 1)[1])
    answers: dict[str, list] = {"subkeys": [], "plain": [], "replay": []}

    async def store(kind: str, index: int, value: bytes, expiry: float, subkey=None) -> None:
        key = DHTID.generate(source=block_key(prefix, index))
        answers[kind] += await node.protocol.call_store(bootstrap, [key], [value], [expiry], [subkey]) or [None]
        await node.store(block_key(prefix, index), msgpack.unpackb(value), expiry, subkey=subkey)

    now = get_dht_time()
    for peer, (start, end) in zip(swarm.peers, SPANS, strict=True):
        for state, throughput, expiry in (
            (ServerState.OFFLINE, 1.0, now + 1e7),  # far-future expiry: would pin the subkey against refreshes
            (ServerState.JOINING, 1.0, now + 60),  # would stop everyone's rebalancing
            (ServerState.ONLINE, 1e308, now + 60),  # would take all traffic
        ):
            fake = msgpack.packb(ServerRecord(peer, start, end, state, throughput=throughput).to_dict())
            for index in range(start, end):
                await store("subkeys", index, fake, expiry, subkey=peer)
    me = p2p.peer_id.to_base58()
    liar = msgpack.packb(ServerRecord(me, 0, NUM_BLOCKS, ServerState.ONLINE, throughput=1e308).to_dict())
    for index in range(NUM_BLOCKS):
        await store("subkeys", index, liar, now + 60, subkey=me)  # its own id, but unsigned
        await store("plain", index, msgpack.packb("x"), now + 1e7)  # would replace the whole dictionary
    # server 0's real signed record, replayed under block 3, which it does not hold
    key0 = DHTID.generate(source=block_key(prefix, 0))
    found = (await node.protocol.call_find(bootstrap, [key0]))[key0][0]
    signed, expiry = found.value.get(swarm.peers[0])
    key3 = DHTID.generate(source=block_key(prefix, 3))
    answers["replay"] += await node.protocol.call_store(bootstrap, [key3], [signed], [expiry], [swarm.peers[0]])
    return answers


def test_forged_records_change_nothing(swarm: Swarm) -> None:
    before = swarm.view()
    assert {r.peer_id for records in before.values() for r in records} == set(swarm.peers)
    expected = decisions(before, swarm.peers)
    p2p, node = swarm.client.run(start_forger(swarm), 60)
    try:
        answers = swarm.client.run(forge(p2p, node, swarm, swarm.client.dht_prefix), 120)
        check_unchanged(swarm, before, expected, answers)
    finally:
        swarm.client.run(node.shutdown(), 30)
        swarm.client.run(p2p.shutdown(), 30)


def check_unchanged(swarm: Swarm, before: dict, expected: dict, answers: dict) -> None:
    assert answers["subkeys"] and not any(answers["subkeys"]), answers  # the bootstrap node refused each one
    assert answers["plain"] and not any(answers["plain"]), answers
    assert answers["replay"] == [False], answers
    deadline = time.monotonic() + 8  # several announce periods: the servers' refreshes still get through
    while time.monotonic() < deadline:
        after = swarm.view()
        assert summary(after) == summary(before)
        assert decisions(after, swarm.peers) == expected
        time.sleep(1)
    for child in swarm.local.servers:
        assert child.process.poll() is None, child.tail()
