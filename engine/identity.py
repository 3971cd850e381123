"""A peer's libp2p identity as Python can use it: the private key that signs its DHT records, and peer ids
computed from public keys, so that a record about peer P is believed only when P's own key signed it.

libp2p derives an RSA peer's id from its public key: the SHA-256 multihash of the key's protobuf encoding. The P2P
daemon reads the private key from an identity file (hivemind writes RSA keys there); a server keeps that key to
sign with, so its records carry the proof that they come from the peer whose id they name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hivemind.p2p import P2P
from hivemind.proto import crypto_pb2

_SHA256_MULTIHASH = b"\x12\x20"  # multihash code 0x12 (sha2-256), digest length 32
_MAX_PUBLIC_KEY_BYTES = 2048  # a 4096-bit RSA key is ~550 bytes; anything far larger is not a key
_PADDING, _HASH = padding.PKCS1v15(), hashes.SHA256()


class IdentityError(ValueError):
    """An identity file or a public key that is not a usable RSA libp2p key."""


class PeerKey:
    """The private key of this peer's libp2p identity: signs records that others verify against its peer id."""

    def __init__(self, private_key: rsa.RSAPrivateKey):
        self._private_key = private_key
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_bytes = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
        self.peer_id = peer_id_of(self.public_bytes)

    @classmethod
    def load(cls, identity_path: str | os.PathLike) -> PeerKey:
        """The key in a libp2p identity file (what ``--identity-path`` names and the P2P daemon reads)."""
        try:
            message = crypto_pb2.PrivateKey.FromString(Path(identity_path).read_bytes())
            key = serialization.load_der_private_key(message.data, password=None)
        except OSError as error:
            raise IdentityError(f"cannot read identity file {identity_path}: {error.strerror}") from None
        except Exception:
            raise IdentityError(f"{identity_path} is not a libp2p identity file") from None
        if message.key_type != crypto_pb2.RSA or not isinstance(key, rsa.RSAPrivateKey):
            raise IdentityError(f"{identity_path} holds a non-RSA key; Nectar signs records with RSA identities")
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data, _PADDING, _HASH)


def peer_id_of(public_bytes: bytes) -> str:
    """The base58 peer id of a protobuf-encoded libp2p RSA public key."""
    return base58.b58encode(_SHA256_MULTIHASH + hashlib.sha256(public_bytes).digest()).decode()


def verify(public_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``data`` was made by the RSA key ``public_bytes`` (protobuf-encoded); never raises."""
    if not isinstance(public_bytes, bytes) or not isinstance(signature, bytes):
        return False
    if len(public_bytes) > _MAX_PUBLIC_KEY_BYTES:
        return False
    try:
        message = crypto_pb2.PublicKey.FromString(public_bytes)
        if message.key_type != crypto_pb2.RSA:
            return False
        key = serialization.load_der_public_key(message.data)
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(signature, data, _PADDING, _HASH)
    except InvalidSignature:
        return False
    except Exception:  # a malformed key is a failed check, never a crash
        return False
    return True


class EphemeralIdentity:
    """A fresh identity file for a peer started without ``--identity-path``, removed once the daemon has read it.

    The daemon would otherwise make up a key that Python never sees, and the peer could not sign its records.
    """

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="nectar-id-")
        self.path = os.path.join(self._directory.name, "identity.key")
        P2P.generate_identity(self.path)
        self.key = PeerKey.load(self.path)

    def remove(self) -> None:
        self._directory.cleanup()
