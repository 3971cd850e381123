"""Private swarms: on a real local swarm started with a swarm key, peers holding the key read and write the DHT and
call servers; an outsider without it (or with another key) can do none of that, and cannot pose as a member."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import torch
from conftest import TEST_ENV
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.utils import P2PHandlerError
from hivemind.proto import runtime_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.asyncio import as_aiter
from hivemind.utils.multiaddr import Multiaddr
from swarm_helpers import RawStream, forward, wait_covered

from agent.cli import main
from agent.local_swarm import LocalSwarm
from engine import wire
from engine.client.config import ClientSettings
from engine.client.swarm import SwarmConnection
from engine.models.span import load_span
from engine.peer import SwarmJoinError
from engine.records import ServerRecord, ServerState, block_key, default_dht_prefix
from engine.swarm_key import GuardedP2P, NotAMember, SwarmKeyError, load_swarm_key, new_swarm_key
from engine.swarm_view import read_view
from engine.weights import resolve_model

pytestmark = pytest.mark.slow

NUM_BLOCKS = 4


class Swarm:
    def __init__(self, local: LocalSwarm, key: Path, path: Path):
        self.local, self.key, self.path = local, key, path
        self.prefix = default_dht_prefix(str(path))
        self.server = local.servers[0].ready["peer_id"]
        self.bootstrap = PeerID.from_base58(local.initial_peers[0].rsplit("/p2p/", 1)[1])

    def connect(self, key: Path | None) -> SwarmConnection:
        settings = ClientSettings(swarm_key=None if key is None else str(key), ping_timeout=5)
        return SwarmConnection(self.local.initial_peers, self.prefix, settings=settings)


def write_key(path: Path, capsys) -> Path:
    assert main(["dht", "--new-swarm-key"]) == 0
    path.write_text(capsys.readouterr().out)
    return path


@pytest.fixture(scope="module")
def swarm(tiny_checkpoints, tmp_path_factory) -> Iterator[Swarm]:
    key = tmp_path_factory.mktemp("key") / "swarm.key"
    key.write_text(new_swarm_key())
    path = tiny_checkpoints("llama")
    args = ["--swarm-key", str(key), "--throughput", "100"]
    with LocalSwarm(str(path), [(0, NUM_BLOCKS)], server_args=args, env=TEST_ENV, dht_args=args[:2]) as local:
        yield Swarm(local, key, path)


def test_new_swarm_key_prints_a_loadable_key(tmp_path, capsys) -> None:
    first = load_swarm_key(write_key(tmp_path / "a.key", capsys))
    second = load_swarm_key(write_key(tmp_path / "b.key", capsys))
    assert len(first) == 32 and first != second


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello\n", "is not a swarm key file"),
        ("/key/swarm/psk/1.0.0/\n/base16/\nzz\n", "not 64 hexadecimal digits"),
        ("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n", "not 64 hexadecimal digits"),
    ],
)
def test_a_bad_key_file_is_a_clear_error(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "swarm.key"
    path.write_text(text)
    with pytest.raises(SwarmKeyError, match=message):
        load_swarm_key(path)
    with pytest.raises(SwarmKeyError, match="cannot read"):
        load_swarm_key(tmp_path / "missing.key")


def test_members_read_the_dht_and_call_servers(swarm: Swarm) -> None:
    with swarm.connect(swarm.key) as member:
        wait_covered(member, NUM_BLOCKS)
        hidden = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(0))
        span = load_span(resolve_model(swarm.path), 0, NUM_BLOCKS, torch.float32)
        with torch.inference_mode():
            expected = span(hidden, start=0, end=NUM_BLOCKS)
        torch.testing.assert_close(forward(member, swarm.server, hidden, 0, NUM_BLOCKS), expected)
        with RawStream(member, swarm.server) as stream:
            stream.open(start=0, end=NUM_BLOCKS, max_length=8)
            torch.testing.assert_close(stream.step(hidden, 0), expected)


async def outsider_attempts(swarm: Swarm, key: bytes | None) -> dict[str, object]:
    """What an outsider (a plain peer, or a guarded one with another key) gets from each way into the swarm."""
    p2p = await (P2P if key is None else GuardedP2P).create(initial_peers=swarm.local.initial_peers)
    if key is not None:
        await p2p.guard(key)
    server = swarm.local.servers[0].ready
    maddrs = [Multiaddr(addr.rsplit("/p2p/", 1)[0]) for addr in server["maddrs"]]
    await p2p._client.connect(PeerID.from_base58(swarm.server), maddrs)  # so refusals, not dialing, are tested
    outcome: dict[str, object] = {}

    async def attempt(name: str, coroutine) -> None:
        try:
            outcome[name] = await asyncio.wait_for(coroutine, 60)
        except Exception as error:  # what we look for: a refusal
            outcome[name] = error

    async def stream() -> object:
        messages = as_aiter(wire.request(start=0, end=NUM_BLOCKS, max_length=8))
        answers = await p2p.iterate_protobuf_handler(
            PeerID.from_base58(swarm.server), wire.INFERENCE_PROTOCOL, messages, runtime_pb2.ExpertResponse
        )
        return [answer async for answer in answers]

    try:
        await attempt("ping", wire.call(p2p, swarm.server, wire.PING_PROTOCOL, wire.request(), 30))
        hidden = torch.zeros(1, 1, 64)
        forward = wire.request([hidden], start=0, end=NUM_BLOCKS)
        await attempt("forward", wire.call(p2p, swarm.server, wire.FORWARD_PROTOCOL, forward, 30))
        await attempt("stream", stream())
        await attempt("join", DHTNode.create(p2p=p2p, initial_peers=swarm.local.initial_peers, client_mode=True))
        node = await DHTNode.create(p2p=p2p, client_mode=True)
        key_id = DHTID.generate(source=block_key(swarm.prefix, 0))
        await attempt("read", node.protocol.call_find(swarm.bootstrap, [key_id]))
        me = p2p.peer_id.to_base58()
        fake = msgpack.packb(ServerRecord(me, 0, NUM_BLOCKS, ServerState.ONLINE).to_dict())
        await attempt("write", node.protocol.call_store(swarm.bootstrap, [key_id], [fake], [get_dht_time() + 30], [me]))
        await node.shutdown()
    finally:
        await p2p.shutdown()
    return outcome


@pytest.mark.parametrize("which", ["no key", "another key"])
def test_an_outsider_can_neither_read_nor_write_nor_call(swarm: Swarm, which: str, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_text(new_swarm_key())
    key = None if which == "no key" else load_swarm_key(other)
    outcome = asyncio.run(outsider_attempts(swarm, key))
    for name in ("ping", "forward"):
        assert isinstance(outcome[name], P2PHandlerError | NotAMember), outcome
    assert outcome["stream"] == [] or isinstance(outcome["stream"], P2PHandlerError | NotAMember), outcome
    assert isinstance(outcome["join"], RuntimeError) and "bootstrap failed" in str(outcome["join"]), outcome  # hivemind
    assert outcome["read"] is None and outcome["write"] is None, outcome  # no answer: the node refused the call
    with pytest.raises(SwarmJoinError, match="could not join the swarm: no initial peer answered"):
        swarm.connect(None if key is None else other)
    with swarm.connect(swarm.key) as member:  # the swarm saw nothing of it
        wait_covered(member, NUM_BLOCKS)
        records = member.run(member.read_blocks(0, NUM_BLOCKS), 60)
        assert {record.peer_id for items in records.values() for record in items} == {swarm.server}


def test_nectar_swarm_reads_a_private_swarm_with_its_key(swarm: Swarm) -> None:
    view = read_view(swarm.local.initial_peers, swarm.prefix, NUM_BLOCKS, swarm_key=str(swarm.key))
    assert view.uncovered == [] and [span.peer_id for span in view.spans] == [swarm.server]
