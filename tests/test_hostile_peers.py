"""Hostile peers on a real local swarm: forged DHT records, and thousands of malformed messages.

A DHT node and two ``nectar serve`` processes run on 127.0.0.1 (one swarm for both tests).

Forged records: a forger joins the DHT as a full node that checks nothing itself, and stores records under the
servers' ids (offline with a far-future expiry, joining, absurd throughput), plain values over the block keys, and
a server's own signed record replayed under another block. Every honest node refuses them; what a client reads, and
so routing and the rebalancing decisions, are exactly as before.

Hostile input: a client generates text through the swarm the whole time, while a fuzzer peer (a fixed seed,
so every run sends the same cases) sends the servers bad unary RPCs (forward, backward, ping, info), bad inference
streams (bad frames, huge length headers, cut-off frames, bad session requests and steps), and bad DHT requests and
records, some of which it also serves to readers from its own DHT storage. Every bad message must get an error
answer or be dropped (refused by the RPC layer, or its stream closed), no server may crash, and every honest
generation must produce exactly what transformers does. The test prints how many cases of each kind it sent.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import torch
from conftest import TEST_ENV
from hivemind.compression import serialize_torch_tensor
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P, PeerID
from hivemind.proto import dht_pb2, runtime_pb2
from hivemind.utils import get_dht_time
from reference import greedy_reference, load_reference, make_lively_checkpoint
from swarm_helpers import forward, wait_covered

from agent.local_swarm import LocalSwarm
from engine import wire
from engine.balance import ServerPlacement
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM
from engine.client.routing import inference_route, make_route
from engine.models.span import load_span
from engine.records import ServerRecord, ServerState, block_key
from engine.server import placement
from engine.weights import resolve_model

pytestmark = pytest.mark.slow

SEED = 20261128
HIDDEN = 64
NUM_BLOCKS = 4
SPANS = [(0, 2), (2, 4)]
# small limits to break; a short announce period, so the forged-records test sees the servers' refreshes
SERVER_ARGS = ["--max-session-length", "32", "--max-request-tokens", "64", "--throughput", "100"]
SERVER_ARGS += ["--announce-period", "2"]
UNARY_CASES = 2000
STREAM_CASES = 400
DHT_CASES = 1100
PROMPT = [5, 17, 3, 99, 42]
NEW_TOKENS = 12
CONCURRENCY = 16
ANSWER_TIMEOUT = 20.0


class Swarm:
    def __init__(self, path: Path, local: LocalSwarm, client: DistributedCausalLM):
        self.path, self.local, self.client = path, local, client
        self.connection = client.swarm
        self.logs = local.log_dir
        self.peers = [child.ready["peer_id"] for child in local.servers]
        self.dht_peers = [PeerID.from_base58(local.initial_peers[0].rsplit("/p2p/", 1)[1])]
        self.dht_peers += [PeerID.from_base58(peer) for peer in self.peers]  # each server runs a DHT node too

    def view(self) -> dict[int, list[ServerRecord]]:
        return self.connection.run(self.connection.read_blocks(0, NUM_BLOCKS), 60)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("hostile")
    path = make_lively_checkpoint(root / "llama", "llama")
    with LocalSwarm(str(path), SPANS, server_args=SERVER_ARGS, env=TEST_ENV, log_dir=root / "logs") as local:
        client = DistributedCausalLM.connect(str(path), local.initial_peers)
        try:
            wait_covered(client.swarm, NUM_BLOCKS)
            yield Swarm(path, local, client)
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
    p2p, node = swarm.connection.run(start_forger(swarm), 60)
    try:
        answers = swarm.connection.run(forge(p2p, node, swarm, swarm.connection.dht_prefix), 120)
        check_unchanged(swarm, before, expected, answers)
    finally:
        swarm.connection.run(node.shutdown(), 30)
        swarm.connection.run(p2p.shutdown(), 30)


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


# ---- bad messages ------------------------------------------------------------------------------------------------

# Values no field takes (None is missing, which every optional field allows; True would pass as 1).
WRONG_VALUES = ["x", "", -1, 2**64 - 1, -(2**63), 1.5, math.nan, math.inf, [], [1, 2], {}, {"a": 1}]


def junk(rng: random.Random, most: int = 512) -> bytes:
    return rng.randbytes(rng.randint(0, most))


def bad_tensor(rng: random.Random) -> runtime_pb2.Tensor:
    """A tensor message that does not describe a tensor, or one of a shape or dtype no block takes."""
    kind = rng.randrange(5)
    if kind == 0:  # sizes and buffer that disagree
        size = [rng.choice([0, 1, 3, 64, 2**31 - 1, 2**32 - 1]) for _ in range(rng.randint(0, 4))]
        buffer = rng.randbytes(2 * rng.randint(0, 256) + 1)  # an odd length: never whole float32 values
        return runtime_pb2.Tensor(buffer=buffer, size=size, dtype="float32")
    if kind == 1:  # an unknown dtype or compression
        return runtime_pb2.Tensor(
            buffer=junk(rng, 64), size=[1, 1, 16], dtype=rng.choice(["", "float33", "object", "torch.float32", "ü"])
        )
    if kind == 2:
        tensor = serialize_torch_tensor(torch.zeros(1, 2, HIDDEN + 1))  # if the noise decodes, its shape is wrong
        tensor.compression = rng.choice([1, 2, 3, 4, 5, 99])  # a buffer that is not in that compression's format
        tensor.buffer = junk(rng)
        return tensor
    shapes = [(HIDDEN,), (1, 2, HIDDEN + 1), (1, 2, HIDDEN, 1), (0, 2, HIDDEN), (1, 0, HIDDEN), (2, 65, HIDDEN)]
    if kind == 3:  # a wrong shape (the last one is over --max-request-tokens)
        return serialize_torch_tensor(torch.zeros(rng.choice(shapes)))
    dtype = rng.choice([torch.int64, torch.bool, torch.complex64, torch.uint8])
    return serialize_torch_tensor(torch.zeros(1, 2, HIDDEN, dtype=dtype))


def bad_metadata(rng: random.Random, fields: list[str]) -> bytes:
    """Metadata the server must refuse: not msgpack, not a map, or the first of ``fields`` wrong (others maybe)."""
    if rng.random() < 0.2:
        return rng.choice([b"\xc1", msgpack.packb([1, 2]), msgpack.packb("map")]) + junk(rng, 64)  # \xc1: never msgpack
    meta = {name: rng.choice(WRONG_VALUES) for name in fields if rng.random() < 0.5}
    meta[fields[0]] = rng.choice(WRONG_VALUES)
    if fields[0] == "start" and rng.random() < 0.3:
        meta["start"], meta["end"] = rng.choice([(3, 1), (0, 99), (-2, 1), (0, 0), (2**40, 2**41)])
    return msgpack.packb(meta)


UNARY_KINDS = ["not protobuf", "truncated", "wrong-typed metadata", "bad tensor", "tensor count", "oversized"]


def bad_unary(rng: random.Random, valid: runtime_pb2.ExpertRequest) -> tuple[str, str, bytes]:
    """(kind, protocol, serialized request) for one bad unary RPC."""
    kind = rng.randrange(6)
    name = UNARY_KINDS[kind]
    if kind == 0:  # not a protobuf
        return name, rng.choice(wire.UNARY_PROTOCOLS), bytes([rng.choice([0x07, 0x0F, 0xFF])]) + junk(rng)
    if kind == 1:  # a valid forward cut short
        data = valid.SerializeToString()
        return name, wire.FORWARD_PROTOCOL, data[: rng.randrange(1, len(data))]
    protocol = rng.choice([wire.FORWARD_PROTOCOL, wire.BACKWARD_PROTOCOL])
    tensors = [serialize_torch_tensor(torch.zeros(1, 2, HIDDEN))]
    if protocol == wire.BACKWARD_PROTOCOL:
        tensors.append(serialize_torch_tensor(torch.zeros(1, 2, HIDDEN)))
    if kind == 2:  # metadata of the wrong types
        meta = bad_metadata(rng, ["start", "end", "adapter", "keep", "session"])
    else:
        meta = msgpack.packb({"start": 0, "end": 2})
    if kind == 3:  # a bad tensor among good metadata
        tensors[rng.randrange(len(tensors))] = bad_tensor(rng)
    if kind == 4:  # tensors missing or extra
        tensors = rng.choice([[], tensors * 3])
    if kind == 5:  # oversized: megabytes of noise where a tensor should be
        tensors[0] = runtime_pb2.Tensor(buffer=rng.randbytes(rng.randint(2, 6) * 2**20), size=[1, 2, HIDDEN])
    return name, protocol, runtime_pb2.ExpertRequest(tensors=tensors, metadata=meta).SerializeToString()


def frame(payload: bytes, marker: bytes = b"\x00", length: int | None = None) -> bytes:
    return marker + (len(payload) if length is None else length).to_bytes(8, "big") + payload


def bad_stream(rng: random.Random) -> tuple[list[bytes], bool]:
    """(chunks to write, whether to close our side after them) for one bad inference stream."""
    good_open = wire.request(start=0, end=2, max_length=16).SerializeToString()
    kind = rng.randrange(6)
    if kind == 0:
        return [junk(rng, 64)], True  # noise, then the end of the stream
    if kind == 1:  # a length far beyond the limit: the server must not try to read it
        return [frame(b"", length=rng.choice([2**40, 2**63, wire.MAX_MESSAGE_BYTES + 1]))], False
    if kind == 2:  # a frame cut short, then the end of the stream
        data = frame(good_open)
        return [data[: rng.randrange(1, len(data))]], True
    if kind == 3:  # a frame whose body is not a request
        return [frame(junk(rng, 128))], False
    if kind == 4:  # a session request with wrong values
        fields = ["start", "end", "batch_size", "max_length", "adapter"]
        request = runtime_pb2.ExpertRequest(metadata=bad_metadata(rng, fields))
        if rng.random() < 0.3:
            request.tensors.append(bad_tensor(rng))
        return [frame(request.SerializeToString())], False
    # a good session request, then a bad step
    step = runtime_pb2.ExpertRequest(
        tensors=[bad_tensor(rng)] if rng.random() < 0.7 else [],
        metadata=bad_metadata(rng, ["position"]) if rng.random() < 0.5 else msgpack.packb({"position": 0}),
    )
    return [frame(good_open), frame(step.SerializeToString())], False


def bad_dht_request(rng: random.Random, prefix: str) -> tuple[str, bytes]:
    """(DHT handler, serialized request): noise, or a store of records no validator accepts."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(["rpc_ping", "rpc_store", "rpc_find"]), bytes([0xFF]) + junk(rng)
    key = DHTID.generate(source=block_key(prefix, rng.randrange(NUM_BLOCKS))).to_bytes()
    if kind == 1:  # a find of keys that are not DHT ids
        return "rpc_find", dht_pb2.FindRequest(
            keys=[junk(rng, 40) for _ in range(rng.randint(1, 4))]
        ).SerializeToString()
    expiry = rng.choice([get_dht_time() + 30, get_dht_time() + 1e9, math.inf, -math.inf, math.nan, -1.0])
    subkey = rng.choice([b"", msgpack.packb(None), junk(rng, 40), msgpack.packb("12D3KooWfake"), msgpack.packb(7)])
    record = ServerRecord("12D3KooWfake", 0, NUM_BLOCKS, ServerState.ONLINE, throughput=1e308).to_dict()
    value = rng.choice([junk(rng), msgpack.packb(record), msgpack.packb([junk(rng, 8), junk(rng, 8), junk(rng, 8)])])
    count = rng.randint(1, 3)
    request = dht_pb2.StoreRequest(
        keys=[key if kind == 2 else junk(rng, 30)] * count,
        subkeys=[subkey] * count,
        values=[value] * count,
        expiration_time=[expiry] * rng.choice([count, count + 1]),  # sometimes misaligned
        in_cache=[rng.random() < 0.5] * count,
    )
    return "rpc_store", request.SerializeToString()


# ---- sending them ------------------------------------------------------------------------------------------------


async def send_unary(p2p: P2P, peer: PeerID, kind: str, protocol: str, data: bytes) -> str:
    """How the server treated a bad request: "error answer", "refused" (by the RPC layer) or "ACCEPTED"."""
    try:
        answer = await asyncio.wait_for(p2p._client.call_unary_handler(peer, protocol, data), ANSWER_TIMEOUT)
    except TimeoutError:
        return "NO ANSWER"
    except Exception:
        return "refused"
    try:
        metadata = msgpack.unpackb(runtime_pb2.ExpertResponse.FromString(answer).metadata)
    except Exception:
        return "ACCEPTED (unreadable answer)"
    if isinstance(metadata, dict) and "error" in metadata:
        return "error answer"
    return f"ACCEPTED {kind} {protocol}: {data[:200]!r}"


async def send_stream(p2p: P2P, peer: PeerID, chunks: list[bytes], close: bool) -> str:
    """How the server treated a bad stream: "error answer" (an error frame or response), or "closed"."""
    _, reader, writer = await p2p.call_binary_stream_handler(peer, wire.INFERENCE_PROTOCOL)
    try:
        try:
            for chunk in chunks:
                writer.write(chunk)
            await writer.drain()
            if close and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):  # the server already ended the stream: read what it said first
            pass
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                try:
                    answer = await wire.receive_message(reader, runtime_pb2.ExpertResponse)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return "closed"
                if answer is None:
                    return "error answer"  # an error frame, or the end of the stream
                if "error" in wire.unpack(answer)[1]:
                    return "error answer"
                # a good answer (to the good session request before a bad step): read on
    except TimeoutError:
        return "NO ANSWER"
    finally:
        writer.close()


async def send_dht(p2p: P2P, peer: PeerID, handler: str, data: bytes) -> str:
    try:
        answer = await asyncio.wait_for(p2p._client.call_unary_handler(peer, f"DHTProtocol.{handler}", data), 20)
    except TimeoutError:
        return "NO ANSWER"
    except Exception:
        return "refused"
    if handler != "rpc_store":
        return "answered (a read)"
    stored = dht_pb2.StoreResponse.FromString(answer).store_ok
    return "STORED" if any(stored) else "not stored"


async def fuzz(swarm: Swarm, prefix: str) -> Counter:
    rng = random.Random(SEED)
    initial = swarm.local.initial_peers
    p2p = await P2P.create(initial_peers=initial)
    node = await DHTNode.create(p2p=p2p, initial_peers=initial, client_mode=False)  # serves its garbage to readers
    outcomes: Counter = Counter()
    valid = wire.request([torch.zeros(1, 2, HIDDEN)], start=0, end=2)
    jobs = []
    for _ in range(UNARY_CASES):
        peer = PeerID.from_base58(rng.choice(swarm.peers))
        jobs.append(("unary", send_unary(p2p, peer, *bad_unary(rng, valid))))
    for _ in range(STREAM_CASES):
        jobs.append(("stream", send_stream(p2p, PeerID.from_base58(rng.choice(swarm.peers)), *bad_stream(rng))))
    for _ in range(DHT_CASES):
        jobs.append(("dht", send_dht(p2p, rng.choice(swarm.dht_peers), *bad_dht_request(rng, prefix))))
    for index in range(NUM_BLOCKS):  # records only the fuzzer keeps, served to whoever asks it
        for subkey in ("12D3KooWfake", swarm.peers[0]):
            record = ServerRecord(subkey, 0, NUM_BLOCKS, ServerState.OFFLINE, throughput=math.inf).to_dict()
            node.protocol.storage.store_subkey(
                DHTID.generate(source=block_key(prefix, index)), subkey, msgpack.packb(record), get_dht_time() + 300
            )
        outcomes["dht: records served from the fuzzer's storage"] += 2
    rng.shuffle(jobs)
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def run(kind: str, job) -> None:
        async with semaphore:
            outcomes[f"{kind}: {await job}"] += 1

    try:
        await asyncio.gather(*(run(kind, job) for kind, job in jobs))
    finally:
        await node.shutdown()
        await p2p.shutdown()
    return outcomes


def test_hostile_input_changes_nothing(swarm: Swarm) -> None:
    reference = load_reference(swarm.path)
    expected = greedy_reference(reference, PROMPT, NEW_TOKENS)
    honest: list[list[int]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def generate_meanwhile() -> None:  # an honest user of the swarm, all through the attack
        try:
            while not done.is_set():
                result = generate(
                    swarm.client, PROMPT, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_token_ids=set()
                )
                honest.append(result.tokens)
        except BaseException as error:
            failures.append(error)

    user = threading.Thread(target=generate_meanwhile, name="honest-user")
    user.start()
    began = time.monotonic()
    try:
        outcomes = asyncio.run(fuzz(swarm, swarm.client.swarm.dht_prefix))
    finally:
        done.set()
        user.join(120)
    seconds = time.monotonic() - began
    sent = sum(count for name, count in outcomes.items())
    print(f"\nfuzzer (seed {SEED}): {sent} bad messages and records in {seconds:.0f} s; {len(honest)} honest sessions")
    for name, count in sorted(outcomes.items()):
        print(f"  {count:6d}  {name}")

    assert not [name for name in outcomes if any(word in name for word in ("ACCEPTED", "STORED", "NO ANSWER"))], (
        outcomes
    )
    assert not failures, failures
    assert honest and all(tokens == expected for tokens in honest), (honest, expected)
    for child in swarm.local.servers:
        assert child.process.poll() is None, f"{child.name} died:\n{child.tail()}"
    for name in ("dht", "server0", "server1"):  # every bad message was handled, none escaped as a crash
        log = (swarm.logs / f"{name}.log").read_text()
        print(f"  {name} log: {log.count('Traceback')} tracebacks")
        assert "Traceback" not in log, log[-3000:]
    blocks = swarm.client.swarm.run(swarm.client.swarm.read_blocks(0, NUM_BLOCKS), 60)
    assert {record.peer_id for items in blocks.values() for record in items} == set(swarm.peers)
    span = load_span(resolve_model(swarm.path), 0, NUM_BLOCKS, torch.float32)
    hidden = torch.randn(1, 3, HIDDEN, generator=torch.Generator().manual_seed(1))
    for peer, (start, end) in zip(swarm.peers, SPANS, strict=True):
        with torch.inference_mode():
            want = span(hidden, start=start, end=end)
        torch.testing.assert_close(forward(swarm.client.swarm, peer, hidden, start, end), want)
