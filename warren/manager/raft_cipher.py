"""Sealed Raft frames: AES-256-GCM on raw bytes, one key per connection and direction (ADR 67).

PySyncObj seals each Raft message as a Fernet token (AES-128-CBC, HMAC-SHA256, base64, a
timestamp): about 45 µs of CPU per message sent and received, on the thread that drives Raft,
and a third more bytes. A sealed frame here is

    0x01 | salt (16 bytes) | counter (8 bytes, big-endian) | AES-GCM(zlib(pickle(message)))

- The key is derived (HKDF-SHA256) from the cluster's Raft secret and the salt, which each
  sender draws at random for each connection: no two connections share a key, and the counter
  (the nonce) never repeats under one key. Random nonces under the one long-lived key would
  repeat after some 2^32 messages, which a busy cluster sends within months.
- The header is authenticated too (associated data). A receiver takes one salt per connection
  and counters that only increase: a frame replayed, reordered or spliced in from another
  connection fails, like a tampered or truncated one.
- Replays of whole connections are refused by PySyncObj's handshake, as with Fernet: each side
  sends a fresh random key that every later message must carry.

A Fernet token begins with "g" (base64 of its version byte 0x80), never with 0x01, so a
receiver tells the two formats apart by the first byte (`is_sealed`).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"
SALT_BYTES = 16
_HEADER = struct.Struct(">c16sQ")  # version, salt, counter
HEADER_BYTES = _HEADER.size
TAG_BYTES = 16
_MASTER_INFO = b"warren raft frames v1"
_CONNECTION_INFO = b"warren raft connection v1"
# What a dialling manager puts before its random handshake key to say "I read sealed frames"
# (ADR 67). A manager of an earlier version takes the whole as an opaque key and answers in
# Fernet; one of this version answers sealed.
HANDSHAKE_MARKER = b"warren-sealed-frames-1:"


class FrameError(ValueError):
    """A sealed frame that does not open: wrong key, tampered, truncated, replayed or reordered."""


def is_sealed(frame: bytes | bytearray | memoryview) -> bool:
    return bytes(frame[:1]) == VERSION


class FrameCipher:
    """The cluster's frame key, derived once from the Raft secret; makes each connection's
    sealer and opener."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        self._master = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MASTER_INFO).derive(raw)

    def connection_key(self, salt: bytes) -> AESGCM:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_CONNECTION_INFO).derive(self._master)
        return AESGCM(key)

    def sealer(self) -> Sealer:
        return Sealer(self)

    def opener(self) -> Opener:
        return Opener(self)


class Sealer:
    """Seals one connection's outgoing frames: a fresh salt (so a fresh key), counters from 1."""

    def __init__(self, cipher: FrameCipher) -> None:
        self._salt = os.urandom(SALT_BYTES)
        self._aead = cipher.connection_key(self._salt)
        self._counter = 0

    def seal(self, data: bytes) -> bytes:
        self._counter += 1
        header = _HEADER.pack(VERSION, self._salt, self._counter)
        return header + self._aead.encrypt(_nonce(self._counter), data, header)


class Opener:
    """Opens one connection's incoming frames: the salt of its first frame, rising counters."""

    def __init__(self, cipher: FrameCipher) -> None:
        self._cipher = cipher
        self._salt: bytes | None = None
        self._aead: AESGCM | None = None
        self._last = 0

    def open(self, frame: bytes) -> bytes:
        if len(frame) < HEADER_BYTES + TAG_BYTES:
            raise FrameError("a sealed frame shorter than its header and tag")
        version, salt, counter = _HEADER.unpack_from(frame)
        if version != VERSION:
            raise FrameError(f"an unknown frame version {version!r}")
        if counter <= self._last:
            raise FrameError("a replayed or reordered frame")
        if self._aead is None:
            aead = self._cipher.connection_key(salt)
        elif salt != self._salt:
            raise FrameError("a frame sealed for another connection")
        else:
            aead = self._aead
        try:
            data = aead.decrypt(_nonce(counter), frame[HEADER_BYTES:], frame[:HEADER_BYTES])
        except InvalidTag:
            raise FrameError("a sealed frame that does not authenticate (wrong key or tampered)") from None
        # Only an authentic frame fixes the connection's salt and moves its counter.
        self._salt, self._aead, self._last = salt, aead, counter
        return data


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")
