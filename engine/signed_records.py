"""Signed DHT records: a record about peer P is stored and read only when P's own libp2p key signed it.

Every DHT node of a swarm (bootstrap nodes, servers, clients) runs ``SignedRecordValidator``. It accepts only
entries of a dictionary key whose subkey is a peer id, whose value carries the public key of that peer id and a
signature over the DHT key, the subkey, the record and its expiry, and whose expiry is at most
``MAX_RECORD_TTL`` (plus clock skew) away. So no peer can announce under another's id, replay a record under
another key, or pin a victim's subkey with a far-future "offline" record (hivemind keeps the newest expiry per
subkey, so such a record would win over every refresh of the victim). Plain values (no subkey) are refused too: a
far-future plain value would replace a key's whole dictionary. Validation runs when a node is asked to store a
record and when it reads one from another node, so forged records are dropped by every reader.
"""

from __future__ import annotations

import struct

import msgpack
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import get_dht_time

from engine.identity import PeerKey, peer_id_of, verify

MAX_RECORD_TTL = 600.0  # seconds; a server refreshes every announce period, far more often
MAX_CLOCK_SKEW = 60.0  # how far ahead of ours another peer's clock may run
_DOMAIN = b"nectar/record/1"  # a signature made for another purpose can never pass as a record's


def signed_payload(key: bytes, subkey: bytes, value: bytes, expiration_time: float) -> bytes:
    """What a record's signature covers: everything the DHT stores about the entry."""
    parts = (_DOMAIN, key, subkey, value)
    return b"".join(struct.pack(">I", len(part)) + part for part in parts) + struct.pack(">d", expiration_time)


class SignedRecordValidator(RecordValidatorBase):
    """Signs this peer's own records (with ``key``; readers need none) and accepts only records signed by the
    peer their subkey names, expiring no later than ``MAX_RECORD_TTL`` from now."""

    def __init__(self, key: PeerKey | None = None):
        self.key = key

    def sign_value(self, record: DHTRecord) -> bytes:
        if self.key is None or _subkey_peer(record.subkey) != self.key.peer_id:
            return record.value  # not ours to sign: every node will refuse it
        signature = self.key.sign(signed_payload(record.key, record.subkey, record.value, record.expiration_time))
        return msgpack.packb([record.value, self.key.public_bytes, signature])

    def validate(self, record: DHTRecord) -> bool:
        if not record.expiration_time <= get_dht_time() + MAX_RECORD_TTL + MAX_CLOCK_SKEW:  # NaN fails too
            return False
        peer = _subkey_peer(record.subkey)
        parts = _unpack(record.value)
        if peer is None or parts is None:
            return False
        value, public_key, signature = parts
        if peer_id_of(public_key) != peer:
            return False
        return verify(public_key, signed_payload(record.key, record.subkey, value, record.expiration_time), signature)

    def strip_value(self, record: DHTRecord) -> bytes:
        parts = _unpack(record.value)
        return record.value if parts is None else parts[0]

    @property
    def priority(self) -> int:
        return 10  # signs first and checks last: a swarm-key layer (if any) wraps the signed record

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return False


def _subkey_peer(subkey: bytes) -> str | None:
    """The peer id a subkey names, or None for plain values and subkeys that are not a peer id string."""
    if subkey in DHTProtocol.RESERVED_SUBKEYS or len(subkey) > 256:
        return None
    try:
        peer = msgpack.unpackb(subkey)
    except Exception:
        return None
    return peer if isinstance(peer, str) else None


def _unpack(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    try:
        parts = msgpack.unpackb(value)
    except Exception:
        return None
    if not (isinstance(parts, list) and len(parts) == 3 and all(isinstance(part, bytes) for part in parts)):
        return None
    return parts[0], parts[1], parts[2]
