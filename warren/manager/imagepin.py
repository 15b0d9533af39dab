"""Images pinned by digest (ADR 34): at create and update, `name:tag` becomes `name:tag@sha256:…`.

The decision (`to_resolve`, `pin`, `check_reference`) is pure and unit-tested; the registry
lookup is a port (`DigestLookup`): `RegistryDigests` over the agents' own registry client, which
the daemon builds from its node's registry settings, and a fake in unit tests. A lookup that fails keeps the tag and
warns, as Docker does: an exec service's image (`exec`) or one loaded with `image import` is in
no registry, and neither must be refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from warren.aio import wait_within
from warren.model import ServiceSpec
from warren.runtime.containerd.reference import InvalidReference, parse_reference
from warren.runtime.containerd.registry import (
    NO_CREDENTIALS,
    Credentials,
    CredentialStore,
    RegistryClient,
    RegistryError,
)
from warren.text import shown
from warren.validate import MAX_IMAGE

LOOKUP_TIMEOUT = 5.0  # seconds for the whole lookup: a create or update must not hang on a registry


class LookupFailed(Exception):
    """The registry could not say which digest the tag names (unreachable, unknown, denied)."""


class DigestLookup(Protocol):
    """The registry's digest for an image reference's tag. Blocking; raises LookupFailed.
    `credentials`: a service's own login (`--with-registry-auth`), before the cluster's."""

    def digest(self, image: str, credentials: Credentials | None = None) -> str: ...


class RegistryDigests:
    """DigestLookup over the Registry HTTP API v2: the digest of the manifest (or image index)
    the tag names, as the agents' pull would fetch it, so every platform keeps its own image."""

    def __init__(
        self,
        insecure: Iterable[str] = (),
        timeout: float = LOOKUP_TIMEOUT,
        *,
        credentials: CredentialStore = NO_CREDENTIALS,
        ca_files: Mapping[str, Path] | None = None,
    ) -> None:
        self._client = RegistryClient(
            insecure, credentials, timeout=timeout, user_agent="warren-manager", ca_files=ca_files
        )

    def digest(self, image: str, credentials: Credentials | None = None) -> str:
        try:
            ref = parse_reference(image)
            client = self._client.with_login(ref.registry, credentials) if credentials else self._client
            _, _, digest = client.get_manifest(ref)
        except (RegistryError, InvalidReference) as exc:
            raise LookupFailed(str(exc)) from exc
        return digest


@dataclass(frozen=True)
class Pinned:
    image: str  # what the spec stores
    warning: str = ""  # why it is not pinned, when a lookup failed


def check_reference(image: str) -> None:
    """Refuse a reference that no registry or containerd could ever use (ValueError, one line)."""
    try:
        parse_reference(image)
    except InvalidReference as exc:
        raise ValueError(str(exc)) from None


def split_digest(image: str) -> tuple[str, str]:
    """(`name[:tag]`, `sha256:…` or "") of a reference."""
    name, sep, digest = image.rpartition("@")
    return (name, digest) if sep else (image, "")


def has_tag(name: str) -> bool:
    """A tag after the last path component (`host:5000/app` has none, `app:1` has one)."""
    return ":" in name.rsplit("/", 1)[-1]


def to_resolve(
    spec: ServiceSpec, previous: ServiceSpec | None, no_resolve: bool, image_given: bool = False
) -> str | None:
    """The reference whose tag to look up for `spec` (created, or updated from `previous`), or
    None to store `spec.image` as it is.

    - An image that did not change is not looked up again (a re-pushed tag is not picked up by
      an unrelated update), unless `--force` bumped `force_update`: then its tag is resolved anew.
      `image_given` (the operator named the image, `--image`) counts as a change: the same tag
      is looked up again, which pins one whose lookup failed before.
    - An image the operator gave with a digest is kept as given (on a force too, if it has no tag).
    """
    if no_resolve:
        return None
    unchanged = previous is not None and spec.image == previous.image and not image_given
    if unchanged and previous is not None and spec.force_update == previous.force_update:
        return None
    name, digest = split_digest(spec.image)
    if digest and not (unchanged and has_tag(name)):
        return None
    return name


def pin(name: str, digest: str) -> str:
    """`name[:tag]@digest`: the tag stays for people to read, the digest decides what runs."""
    return f"{name}@{digest}"


def unpinned_warning(spec_image: str, name: str, reason: str) -> str:
    """What the operator reads when the lookup of `name` failed and `spec_image` is stored."""
    _, digest = split_digest(spec_image)
    if digest:
        return f"image {shown(name)} was not resolved again ({reason}); it stays pinned to {digest}"
    return (
        f"image {shown(name)} could not be pinned to a digest ({reason}); the tag is kept, so nodes may run "
        "different builds of it if it is pushed again"
    )


async def pinned(
    lookup: DigestLookup | None,
    spec: ServiceSpec,
    previous: ServiceSpec | None,
    no_resolve: bool,
    image_given: bool = False,
    credentials: Credentials | None = None,
) -> Pinned:
    """The image to store for `spec`: pinned to the registry's digest, or as it was with a warning."""
    name = to_resolve(spec, previous, no_resolve, image_given)
    if name is None or lookup is None:
        return Pinned(spec.image)
    try:
        digest = await wait_within(asyncio.to_thread(lookup.digest, name, credentials), LOOKUP_TIMEOUT + 1)
    except LookupFailed as exc:
        return Pinned(spec.image, unpinned_warning(spec.image, name, str(exc)))
    except TimeoutError:
        reason = f"no answer from its registry within {LOOKUP_TIMEOUT + 1:g}s"
        return Pinned(spec.image, unpinned_warning(spec.image, name, reason))
    if len(pin(name, digest)) > MAX_IMAGE:  # the spec would be refused at its next update
        return Pinned(
            spec.image, unpinned_warning(spec.image, name, f"with its digest it is over {MAX_IMAGE} characters")
        )
    return Pinned(pin(name, digest))
