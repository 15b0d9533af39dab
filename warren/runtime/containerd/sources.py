"""Where an image's blobs come from: a registry, an OCI archive, or containerd's content store.

Each source checks what it reads against the descriptor's digest; the image service
(warren.runtime.containerd.images) writes what they give into containerd.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import grpc

from warren.runtime.containerd import api
from warren.runtime.containerd.client import Client, code_of
from warren.runtime.containerd.reference import ImageRef
from warren.runtime.containerd.registry import CHUNK, MAX_MANIFEST_BYTES, RegistryClient, RegistryError, digest_of


class MissingContent(Exception):
    """A blob is not in the local content store (so a local re-unpack is impossible)."""


class Source(Protocol):
    """Where blobs come from: a registry, an OCI archive, or containerd's own content store."""

    def read(self, desc: Mapping[str, object]) -> bytes: ...

    def chunks(self, desc: Mapping[str, object]) -> Iterator[bytes]: ...


def verified(desc: Mapping[str, object], data: bytes, where: str) -> bytes:
    digest = str(desc["digest"])
    actual = digest_of(data, digest.split(":", 1)[0])
    if actual != digest:
        raise RegistryError(f"{where}: blob {digest} has digest {actual}", permanent=True)
    return data


class RegistrySource:
    def __init__(self, registry: RegistryClient, ref: ImageRef) -> None:
        self._registry, self._ref = registry, ref

    def read(self, desc: Mapping[str, object]) -> bytes:
        return self._registry.read_blob(self._ref, desc)

    def chunks(self, desc: Mapping[str, object]) -> Iterator[bytes]:
        return self._registry.iter_blob(self._ref, desc)


class ArchiveSource:
    """Blobs of an OCI image layout packed in a tar (`skopeo copy … oci-archive:FILE`)."""

    def __init__(self, tar: tarfile.TarFile, path: Path) -> None:
        self._tar, self._path = tar, path
        self._members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

    def file(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise RegistryError(f"{self._path} is not an OCI archive: it has no {name}", permanent=True)
        handle = self._tar.extractfile(member)
        assert handle is not None
        return handle.read(MAX_MANIFEST_BYTES + 1)

    def _member(self, desc: Mapping[str, object]) -> tarfile.TarInfo:
        algorithm, _, hexdigest = str(desc["digest"]).partition(":")
        member = self._members.get(f"blobs/{algorithm}/{hexdigest}")
        if member is None:
            raise RegistryError(f"{self._path}: blob {desc['digest']} is missing from the archive", permanent=True)
        return member

    def read(self, desc: Mapping[str, object]) -> bytes:
        handle = self._tar.extractfile(self._member(desc))
        assert handle is not None
        return verified(desc, handle.read(MAX_MANIFEST_BYTES + 1), str(self._path))

    def chunks(self, desc: Mapping[str, object]) -> Iterator[bytes]:
        handle = self._tar.extractfile(self._member(desc))
        assert handle is not None
        digest = str(desc["digest"])
        hasher = hashlib.new(digest.split(":", 1)[0])
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            yield chunk
        if f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}" != digest:
            raise RegistryError(f"{self._path}: blob {digest} does not match its digest", permanent=True)


class ContentSource:
    """containerd's content store: lets a known image be re-unpacked without the network."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def read(self, desc: Mapping[str, object]) -> bytes:
        request = api.content_pb2.ReadContentRequest(digest=str(desc["digest"]))
        try:
            data = b"".join(r.data for r in self._client.content.Read(request, metadata=self._client.md(), timeout=60))
        except grpc.RpcError as exc:
            if code_of(exc) == grpc.StatusCode.NOT_FOUND:
                raise MissingContent(str(desc["digest"])) from exc
            raise
        return verified(desc, data, "content store")

    def chunks(self, desc: Mapping[str, object]) -> Iterator[bytes]:
        raise MissingContent(str(desc["digest"]))
