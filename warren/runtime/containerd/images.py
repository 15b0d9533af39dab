"""Pull images into containerd (registry or OCI archive) and unpack them into snapshots.

The sequence, verified against containerd 1.6 (ADR 5): under a lease, write every blob with
`Content.Write` and the garbage-collection labels that tie manifest → config → layers →
snapshot together; unpack layer by layer into snapshots named by chainID; then create the
image record, which is the GC root, and let the lease go. An image whose record and top
snapshot exist is used as is, with no network (pull policy "if not present").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from warren.agent.runtime import RuntimeFailure
from warren.runtime.containerd import api
from warren.runtime.containerd.client import Client, code_of, details_of
from warren.runtime.containerd.reference import ImageRef, InvalidReference, Platform, host_platform, parse_reference
from warren.runtime.containerd.registry import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Credentials,
    RegistryClient,
    RegistryError,
    select_manifest,
)
from warren.runtime.containerd.sources import ArchiveSource, ContentSource, MissingContent, RegistrySource, Source

LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
WRITE_TIMEOUT = 3600.0
APPLY_TIMEOUT = 1800.0
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI chainIDs: chain[0] = diff_id[0]; chain[i] = sha256(chain[i-1] + " " + diff_id[i])."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


@dataclass(frozen=True)
class ImageInfo:
    """An image ready to run: its record's name, its process defaults and its top snapshot."""

    name: str
    manifest_digest: str
    config: Mapping[str, object] = field(hash=False)  # the image config's "config": Entrypoint, Cmd, Env…
    diff_ids: tuple[str, ...] = ()
    chain_id: str = ""


def _descriptor(desc: Mapping[str, Any]) -> dict[str, object]:
    return {"mediaType": str(desc.get("mediaType", "")), "digest": str(desc["digest"]), "size": int(desc["size"])}


def _pb_descriptor(desc: Mapping[str, Any]) -> api.descriptor_pb2.Descriptor:
    return api.descriptor_pb2.Descriptor(
        media_type=str(desc["mediaType"]),
        digest=str(desc["digest"]),
        size=int(desc["size"]),
    )


def _failure(exc: BaseException, what: str) -> RuntimeFailure:
    """A pull-path exception as the runtime port's failure, with a human message."""
    if isinstance(exc, RuntimeFailure):
        return exc
    if isinstance(exc, RegistryError):
        return RuntimeFailure(exc.message, permanent=exc.permanent)
    if isinstance(exc, InvalidReference):
        return RuntimeFailure(str(exc), permanent=True)
    if isinstance(exc, grpc.RpcError):
        return RuntimeFailure(f"{what}: containerd: {details_of(exc)}")
    return RuntimeFailure(f"{what}: {exc}")


class ImageService:
    """Makes images available in one containerd namespace. Thread-safe; one pull per image at a time."""

    def __init__(
        self,
        client: Client,
        registry: RegistryClient,
        snapshotter: str = "overlayfs",
        platform: Platform | None = None,
    ) -> None:
        self._client = client
        self._registry = registry
        self.snapshotter = snapshotter
        self.platform = platform or host_platform()
        self._known: dict[str, tuple[str, ImageInfo]] = {}  # name -> (record target digest, info)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- public -------------------------------------------------------------------------------

    def ensure(self, reference: str, login: Credentials | None = None) -> ImageInfo:
        """The image, from containerd if it is there and unpacked, else pulled from its registry.

        A reference pinned to a digest (`name:tag@sha256:…`, ADR 34) is found under its own name,
        or under its tag when that record holds the same digest (an image loaded with `image
        import`); a tag that holds other bytes does not count: the digest is pulled. `login`:
        the task's own registry login (ADR 43), used before the client's store."""
        try:
            ref = parse_reference(reference)
            with self._lock_for(ref.name):
                return self.local(ref.name) or self._local_by_digest(ref) or self._pull(ref, login)
        except Exception as exc:
            raise _failure(exc, f"pulling {reference}") from exc

    def pull(self, reference: str) -> ImageInfo:
        """Pull from the registry even if a copy exists (refreshes a moved tag)."""
        try:
            ref = parse_reference(reference)
            with self._lock_for(ref.name):
                return self._pull(ref)
        except Exception as exc:
            raise _failure(exc, f"pulling {reference}") from exc

    def import_archive(self, path: str | Path, name: str = "") -> list[str]:
        """Load an OCI archive (an OCI image layout in a tar) for hosts with no registry access.

        The image is named `name` if given (archives with one image only), else by the entry's
        `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation when that is
        a full reference. Returns the image names.
        """
        path = Path(path)
        try:
            with tarfile.open(path, "r:*") as tar:
                source = ArchiveSource(tar, path)
                source.file("oci-layout")
                entries = json.loads(source.file("index.json")).get("manifests") or []
                if not entries:
                    raise RegistryError(f"{path}: index.json lists no images", permanent=True)
                if name and len(entries) != 1:
                    raise RegistryError(f"{path} holds {len(entries)} images; a name fits only one", True)
                names = []
                for entry in entries:
                    image_name = parse_reference(name).name if name else self._archive_name(path, entry)
                    desc, body = _descriptor(entry), source.read(entry)
                    if desc["mediaType"] in INDEX_TYPES or json.loads(body).get("mediaType") in INDEX_TYPES:
                        desc = _descriptor(select_manifest(json.loads(body), self.platform))
                        body = source.read(desc)
                    with self._lock_for(image_name):
                        names.append(self._ingest(image_name, source, desc, body).name)
                return names
        except (OSError, tarfile.TarError) as exc:
            raise RuntimeFailure(f"cannot read OCI archive {path}: {exc}", permanent=True) from exc
        except Exception as exc:
            raise _failure(exc, f"importing {path}") from exc

    def local(self, name: str) -> ImageInfo | None:
        """The image if containerd has its record, its content and its snapshots (no network)."""
        try:
            image = self._client.images.Get(
                api.images_pb2.GetImageRequest(name=name), metadata=self._client.md(), timeout=self._client.timeout
            ).image
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return None
            raise
        known = self._known.get(name)
        if known is not None and known[0] == image.target.digest and self._snapshot_exists(known[1].chain_id):
            return known[1]
        source = ContentSource(self._client)
        target = {"mediaType": image.target.media_type, "digest": image.target.digest, "size": image.target.size}
        try:
            body = source.read(target)
            if target["mediaType"] in INDEX_TYPES:
                target = _descriptor(select_manifest(json.loads(body), self.platform))
                body = source.read(target)
            info, _ = self._describe(name, target, body, source)
            if self._snapshot_exists(info.chain_id):
                self._known[name] = (image.target.digest, info)
                return info
            return self._ingest(name, source, target, body)  # content is here, snapshots are not
        except MissingContent:
            return None

    def _local_by_digest(self, ref: ImageRef) -> ImageInfo | None:
        """The image record named by `ref`'s tag, if it holds `ref`'s digest."""
        if not ref.digest or not ref.tag:
            return None
        tagged = ImageRef(ref.registry, ref.repository, ref.tag).name
        try:
            record = self._client.images.Get(
                api.images_pb2.GetImageRequest(name=tagged), metadata=self._client.md(), timeout=self._client.timeout
            ).image
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return None
            raise
        return self.local(tagged) if record.target.digest == ref.digest else None

    # -- pull and ingest ----------------------------------------------------------------------

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _archive_name(self, path: Path, entry: Mapping[str, object]) -> str:
        annotations = entry.get("annotations") or {}
        assert isinstance(annotations, dict)
        for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
            value = str(annotations.get(key, ""))
            if value and ("/" in value or ":" in value):
                return parse_reference(value).name
        tag = annotations.get("org.opencontainers.image.ref.name", "")
        raise RegistryError(
            f"{path}: image {entry.get('digest')} is named only {tag!r} in the archive; pass a full name",
            permanent=True,
        )

    def _pull(self, ref: ImageRef, login: Credentials | None = None) -> ImageInfo:
        registry = self._registry.with_login(ref.registry, login) if login else self._registry
        desc, body = registry.resolve(ref, self.platform)
        return self._ingest(ref.name, RegistrySource(registry, ref), desc, body)

    def _describe(self, name: str, desc: Mapping[str, object], body: bytes, source: Source) -> tuple[ImageInfo, bytes]:
        """Parse a manifest and fetch its config: what the image runs and which snapshots it needs."""
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"image {name}: manifest is not JSON", permanent=True) from exc
        media_type = str(desc.get("mediaType") or manifest.get("mediaType") or "")
        if media_type not in MANIFEST_TYPES:
            raise RegistryError(f"image {name}: unsupported manifest type {media_type!r}", permanent=True)
        try:
            config_bytes = source.read(_descriptor(manifest["config"]))
            config = json.loads(config_bytes)
            diff_ids = tuple(str(d) for d in config["rootfs"]["diff_ids"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"image {name}: malformed image config ({exc})", permanent=True) from exc
        if len(diff_ids) != len(manifest.get("layers") or []):
            raise RegistryError(
                f"image {name}: the config lists {len(diff_ids)} layers, the manifest another number", True
            )
        if not diff_ids:
            raise RegistryError(f"image {name} has no layers", permanent=True)
        info = ImageInfo(name, str(desc["digest"]), config.get("config") or {}, diff_ids, chain_ids(diff_ids)[-1])
        return info, config_bytes

    def _ingest(self, name: str, source: Source, desc: Mapping[str, object], body: bytes) -> ImageInfo:
        desc = _descriptor({**desc, "mediaType": desc.get("mediaType") or json.loads(body).get("mediaType", "")})
        info, config_bytes = self._describe(name, desc, body, source)
        manifest = json.loads(body)
        config_desc = _descriptor(manifest["config"])
        layers = [_descriptor(layer) for layer in manifest["layers"]]
        for layer in layers:
            if layer["mediaType"] not in LAYER_TYPES:
                raise RegistryError(f"image {name}: unsupported layer type {layer['mediaType']!r}", permanent=True)
        chain = chain_ids(info.diff_ids)
        with self._client.lease() as lease:
            for layer, diff_id in zip(layers, info.diff_ids, strict=True):
                self._write(layer, functools.partial(source.chunks, layer), {UNCOMPRESSED_LABEL: diff_id}, lease)
            snapshot_label = {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chain[-1]}
            self._write(config_desc, lambda: [config_bytes], snapshot_label, lease)
            self._unpack(name, layers, info.diff_ids, chain, lease)
            refs = {"containerd.io/gc.ref.content.config": str(config_desc["digest"])}
            refs |= {f"containerd.io/gc.ref.content.l.{i}": str(layer["digest"]) for i, layer in enumerate(layers)}
            self._write(desc, lambda: [body], refs, lease)
            self._put_image(name, desc, lease)
        self._known[name] = (str(desc["digest"]), info)
        return info

    def _write(
        self,
        desc: Mapping[str, Any],
        chunks: Callable[[], Iterable[bytes]],
        labels: Mapping[str, str],
        lease: str,
    ) -> None:
        """Content.Write: WRITE… then COMMIT with labels; content already present only gets the labels."""
        digest, size = str(desc["digest"]), int(desc["size"])
        md = self._client.md(lease)
        if self._label_if_present(digest, labels, md):
            return
        ref = f"warren-{digest}"
        failure: list[BaseException] = []
        pb = api.content_pb2

        def requests() -> Iterator[api.content_pb2.WriteContentRequest]:
            offset = 0
            try:
                for chunk in chunks():
                    yield pb.WriteContentRequest(
                        action=pb.WRITE, ref=ref, total=size, expected=digest, offset=offset, data=chunk
                    )
                    offset += len(chunk)
            except Exception as exc:  # surfaced below: gRPC would only log it and cancel the call
                failure.append(exc)
                return
            yield pb.WriteContentRequest(
                action=pb.COMMIT, ref=ref, total=size, expected=digest, offset=offset, labels=dict(labels)
            )

        try:
            for _ in self._client.content.Write(requests(), metadata=md, timeout=WRITE_TIMEOUT):
                pass
        except grpc.RpcError as exc:
            if code_of(exc) == ALREADY_EXISTS:
                self._label_if_present(digest, labels, md)
                return
            self._abort(ref)
            if failure:
                raise failure[0] from exc
            raise
        if failure:
            self._abort(ref)
            raise failure[0]

    def _abort(self, ref: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self._client.content.Abort(api.content_pb2.AbortRequest(ref=ref), metadata=self._client.md(), timeout=10)

    def _label_if_present(self, digest: str, labels: Mapping[str, str], md: tuple[tuple[str, str], ...]) -> bool:
        pb = api.content_pb2
        try:
            info = self._client.content.Info(pb.InfoRequest(digest=digest), metadata=md, timeout=self._client.timeout)
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return False
            raise
        missing = {k: v for k, v in labels.items() if info.info.labels.get(k) != v}
        if missing:
            self._client.content.Update(
                pb.UpdateRequest(
                    info=pb.Info(digest=digest, labels=missing),
                    update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in missing]),
                ),
                metadata=md,
                timeout=self._client.timeout,
            )
        return True

    def _snapshot_exists(self, key: str) -> bool:
        request = api.snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        try:
            self._client.snapshots.Stat(request, metadata=self._client.md(), timeout=self._client.timeout)
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return False
            raise
        return True

    def _unpack(
        self,
        name: str,
        layers: Sequence[Mapping[str, object]],
        diff_ids: Sequence[str],
        chain: Sequence[str],
        lease: str,
    ) -> None:
        """One snapshot per layer, named by its chainID: Prepare, Diff.Apply, check diff_id, Commit."""
        snaps, md, sn = self._client.snapshots, self._client.md(lease), self.snapshotter
        pb = api.snapshots_pb2
        parent = ""
        for layer, diff_id, chain_id in zip(layers, diff_ids, chain, strict=True):
            if self._snapshot_exists(chain_id):
                parent = chain_id
                continue
            key = f"extract-{secrets.token_hex(8)} {chain_id}"
            mounts = snaps.Prepare(
                pb.PrepareSnapshotRequest(snapshotter=sn, key=key, parent=parent), metadata=md, timeout=60
            ).mounts
            try:
                applied = self._client.diff.Apply(
                    api.diff_pb2.ApplyRequest(diff=_pb_descriptor(layer), mounts=mounts),
                    metadata=md,
                    timeout=APPLY_TIMEOUT,
                ).applied
                if applied.digest != diff_id:
                    raise RegistryError(
                        f"image {name}: layer {layer['digest']} unpacks to {applied.digest}, "
                        f"but the image config says {diff_id}",
                        permanent=True,
                    )
                try:
                    snaps.Commit(
                        pb.CommitSnapshotRequest(snapshotter=sn, name=chain_id, key=key), metadata=md, timeout=60
                    )
                except grpc.RpcError as exc:
                    if code_of(exc) != ALREADY_EXISTS:  # another unpack of the same layer won the race
                        raise
                    self._remove_snapshot(key)
            except BaseException:
                self._remove_snapshot(key)
                raise
            parent = chain_id

    def _remove_snapshot(self, key: str) -> None:
        with contextlib.suppress(grpc.RpcError):
            self._client.snapshots.Remove(
                api.snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
                metadata=self._client.md(),
                timeout=60,
            )

    def _put_image(self, name: str, desc: Mapping[str, object], lease: str) -> None:
        pb = api.images_pb2
        image = pb.Image(name=name, target=_pb_descriptor(desc))
        md = self._client.md(lease)
        try:
            self._client.images.Create(pb.CreateImageRequest(image=image), metadata=md, timeout=self._client.timeout)
        except grpc.RpcError as exc:
            if code_of(exc) != ALREADY_EXISTS:
                raise
            self._client.images.Update(
                pb.UpdateImageRequest(image=image, update_mask=field_mask_pb2.FieldMask(paths=["target"])),
                metadata=md,
                timeout=self._client.timeout,
            )
