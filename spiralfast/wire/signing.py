"""A node's own Ed25519 key: what lets it speak for itself, and only for itself.

The shared mesh token proves membership; it does not say *which* member sent a
message.  Every node therefore holds a key of its own (:class:`NodeKey`), whose
32-byte raw public key travels in its handshake, its own record and its bus
announcements, and is pinned by receivers to ``(node id, incarnation)``.  What the
node signs with it (the handshake transcript, its sealed bus frames, its own record)
can then be checked by anyone holding the public key with :func:`verify`.

The key is kept in ``<data dir>/<node id>.key`` (mode 0600, created atomically) when
the node has a data directory, else generated for each start.

The keys derived from the shared mesh token (:func:`derive_key`: one per purpose, the
handshake's proofs and each mesh's bus seal) live here too, beside the node's own key.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = ["KDF_ROUNDS", "PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "NodeKey", "derive_key", "self_record_bytes", "verify"]

#: Size of a raw Ed25519 public key.
PUBLIC_KEY_SIZE = 32
#: Size of an Ed25519 signature.
SIGNATURE_SIZE = 64
_SEED_SIZE = 32
#: First line of a key file: says what the file is (the seed follows, hex-encoded).
_HEADER = b"spiralfast-ed25519-v1\n"

#: The fields a node announces about itself, and signs (see :func:`self_record_bytes`).
SELF_RECORD_FIELDS = (
    "node_id", "incarnation", "epoch", "websocket_endpoint", "endpoint", "name",
    "capabilities", "mesh", "public_key", "started_at", "version",
)

#: PBKDF2 rounds for keys derived from the mesh token: a captured proof or sealed frame
#: must not let anyone test guesses of the token fast (about 0.1 s, once per process).
KDF_ROUNDS = 200_000


@functools.lru_cache(maxsize=16)
def derive_key(token: str, purpose: str) -> bytes:
    """A key for ``purpose`` from the mesh token (PBKDF2-HMAC-SHA256)."""
    return hashlib.pbkdf2_hmac("sha256", token.encode(), b"spiralfast\0" + purpose.encode(), KDF_ROUNDS)


class NodeKey:
    """A node's Ed25519 signing key and its 32-byte raw public key."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh key (kept in memory only)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """The key of a 32-byte seed (its private bytes)."""
        if len(seed) != _SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {_SEED_SIZE} bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        """The 32 private bytes (what the key file holds)."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        """The key kept in *path*, created (mode 0600, atomically) when the file does not exist.

        A file that exists but does not hold a key raises :class:`ValueError` naming the
        file (it is never overwritten: that would silently change the node's identity).
        A key file readable by others is tightened to 0600.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls._create(path)
        key = cls._parse(path, data)
        with contextlib.suppress(OSError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        return key

    @classmethod
    def _parse(cls, path: Path, data: bytes) -> NodeKey:
        if not data.startswith(_HEADER):
            raise ValueError(f"{path} is not a spiralfast node key file (it does not start with "
                             f"{_HEADER.strip().decode()!r}); move it away to create a new key")
        try:
            seed = bytes.fromhex(data[len(_HEADER):].strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"{path}: the key is not hex-encoded") from None
        if len(seed) != _SEED_SIZE:
            raise ValueError(f"{path}: the key is {len(seed)} bytes, expected {_SEED_SIZE}")
        return cls.from_seed(seed)

    @classmethod
    def _create(cls, path: Path) -> NodeKey:
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_HEADER + key.seed().hex().encode("ascii") + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            try:
                # Never replace a key another process created meanwhile: link fails if it exists.
                os.link(tmp, path)
            except FileExistsError:
                return cls._parse(path, path.read_bytes())
            except OSError:
                # File systems without hard links: an atomic rename (last writer wins).
                os.replace(tmp, path)
                return cls._parse(path, path.read_bytes())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return key

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature of *data*."""
        return self._private.sign(bytes(data))

    def __repr__(self) -> str:  # never shows the private key
        return f"NodeKey(public={self.public.hex()[:16]}…)"


_PUBLIC_CACHE: dict[bytes, Ed25519PublicKey] = {}


def _public_key(public: bytes) -> Ed25519PublicKey:
    key = _PUBLIC_CACHE.get(public)
    if key is None:
        key = Ed25519PublicKey.from_public_bytes(public)
        if len(_PUBLIC_CACHE) >= 4096:
            _PUBLIC_CACHE.clear()
        _PUBLIC_CACHE[public] = key
    return key


def verify(public: bytes, data: bytes, signature: bytes) -> bool:
    """Whether *signature* is *public*'s signature of *data*; never raises on bad input."""
    try:
        if (not isinstance(public, bytes | bytearray | memoryview) or len(public) != PUBLIC_KEY_SIZE
                or not isinstance(signature, bytes | bytearray | memoryview)
                or len(signature) != SIGNATURE_SIZE):
            return False
        _public_key(bytes(public)).verify(bytes(signature), bytes(data))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    except Exception:  # noqa: BLE001 - a malformed key or signature is a refusal, never an error
        return False


def self_record_bytes(record: dict[str, Any]) -> bytes:
    """Canonical bytes of a node's own record: what it signs about itself.

    Only the fields a node announces about itself (:data:`SELF_RECORD_FIELDS`) are
    covered, serialised with orjson with sorted keys, so the same record gives the
    same bytes on every node whatever else receivers added to it (bytes values, such
    as a public key, are written as hex).
    """
    picked: dict[str, Any] = {}
    for name in SELF_RECORD_FIELDS:
        if name in record:
            value = record[name]
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value).hex()
            elif isinstance(value, set | frozenset):
                value = sorted(value)
            picked[name] = value
    return orjson.dumps(picked, option=orjson.OPT_SORT_KEYS)
