"""Signed DHT records (``engine.signed_records``): only the peer a record names can write it, and no record is
accepted with an implausibly far expiry. Pure checks of the validator; the swarm-level test is
``test_forged_records.py``."""

from __future__ import annotations

import msgpack
import pytest
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time

from engine.identity import IdentityError, PeerKey, peer_id_of, verify
from engine.signed_records import MAX_CLOCK_SKEW, MAX_RECORD_TTL, SignedRecordValidator

KEY = b"block-key-hash"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[PeerKey, PeerKey, str]:
    """Two identities as hivemind writes them, and the peer id the first one's file gives the daemon."""
    root = tmp_path_factory.mktemp("ids")
    for name in ("a", "b"):
        P2P.generate_identity(str(root / name))
    expected = PeerID.from_identity((root / "a").read_bytes()).to_base58()
    return PeerKey.load(root / "a"), PeerKey.load(root / "b"), expected


def signed(key: PeerKey, subkey: str, value: dict, expires_in: float = 60.0, dht_key: bytes = KEY) -> DHTRecord:
    record = DHTRecord(dht_key, msgpack.packb(subkey), msgpack.packb(value), get_dht_time() + expires_in)
    return DHTRecord(record.key, record.subkey, SignedRecordValidator(key).sign_value(record), record.expiration_time)


def test_peer_ids_match_libp2p(keys) -> None:
    owner, _, expected = keys
    assert owner.peer_id == expected
    assert peer_id_of(owner.public_bytes) == expected


def test_an_owner_signed_record_is_accepted_and_stripped(keys) -> None:
    owner, _, _ = keys
    record = signed(owner, owner.peer_id, {"state": "online"})
    reader = SignedRecordValidator()
    assert reader.validate(record)
    assert msgpack.unpackb(reader.strip_value(record)) == {"state": "online"}


def test_a_record_under_another_peers_id_is_refused(keys) -> None:
    owner, attacker, _ = keys
    reader = SignedRecordValidator()
    # the attacker cannot sign for the victim's subkey: its validator leaves the value unsigned
    assert not reader.validate(signed(attacker, owner.peer_id, {"state": "offline"}))
    # nor pass its own valid signature off under the victim's subkey
    mine = signed(attacker, attacker.peer_id, {"state": "offline"})
    assert not reader.validate(DHTRecord(KEY, msgpack.packb(owner.peer_id), mine.value, mine.expiration_time))


def test_tampered_or_replayed_records_are_refused(keys) -> None:
    owner, _, _ = keys
    reader = SignedRecordValidator()
    record = signed(owner, owner.peer_id, {"state": "online", "throughput": 10.0})
    value, public_key, signature = msgpack.unpackb(record.value)
    forged_value = msgpack.packb([msgpack.packb({"state": "online", "throughput": 1e308}), public_key, signature])
    assert not reader.validate(DHTRecord(KEY, record.subkey, forged_value, record.expiration_time))
    assert not reader.validate(DHTRecord(b"another-block", record.subkey, record.value, record.expiration_time))
    assert not reader.validate(DHTRecord(KEY, record.subkey, record.value, record.expiration_time + 30))
    flipped = signature[:-1] + bytes([signature[-1] ^ 1])
    assert not reader.validate(
        DHTRecord(KEY, record.subkey, msgpack.packb([value, public_key, flipped]), record.expiration_time)
    )


def test_far_future_expiry_is_refused_even_from_the_owner(keys) -> None:
    owner, _, _ = keys
    reader = SignedRecordValidator()
    assert reader.validate(signed(owner, owner.peer_id, {"state": "offline"}, expires_in=MAX_RECORD_TTL))
    too_far = MAX_RECORD_TTL + MAX_CLOCK_SKEW + 30
    assert not reader.validate(signed(owner, owner.peer_id, {"state": "offline"}, expires_in=too_far))
    assert not reader.validate(signed(owner, owner.peer_id, {"state": "offline"}, expires_in=1e9))


@pytest.mark.parametrize(
    "subkey, value",
    [
        (DHTProtocol.IS_REGULAR_VALUE, msgpack.packb({"state": "offline"})),  # a plain value would hide a dictionary
        (msgpack.packb(7), msgpack.packb([b"", b"", b""])),
        (msgpack.packb("peer"), b"\xc1 not msgpack"),
        (msgpack.packb("peer"), msgpack.packb([b"a", b"b"])),
        (msgpack.packb("peer"), msgpack.packb(["a", "b", "c"])),
        (msgpack.packb("peer"), msgpack.packb([b"v", b"\x08\x00\x12\x05junk", b"sig"])),
        (b"\xff" * 300, msgpack.packb([b"v", b"k", b"s"])),
    ],
)
def test_malformed_entries_are_refused(subkey: bytes, value: bytes) -> None:
    assert not SignedRecordValidator().validate(DHTRecord(KEY, subkey, value, get_dht_time() + 10))


def test_verify_never_raises_on_garbage() -> None:
    for public_key in (b"", b"\x00" * 10, b"\x08\x00\x12\x03abc", b"x" * 5000):
        assert not verify(public_key, b"data", b"signature")
    assert not verify("text", b"data", b"signature")


def test_a_non_identity_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "id"
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="not a libp2p identity file"):
        PeerKey.load(path)
    with pytest.raises(IdentityError, match="cannot read"):
        PeerKey.load(tmp_path / "missing")
