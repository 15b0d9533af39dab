"""Image references and registry names, and the platform images must match: pure functions.

`parse_reference` normalizes a reference the way Docker does; `check_registry_host` and
`parse_registry_ca` read the registry names operators give (`registry login`,
`--registry-ca HOST=FILE`); `host_platform` names this machine's platform. The registry client
(warren.runtime.containerd.registry) fetches what they name.
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass
from pathlib import Path

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# distribution/reference's grammar, simplified to what Docker and containerd accept.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class InvalidReference(ValueError):
    """The image reference does not parse; retrying cannot help."""


@dataclass(frozen=True)
class ImageRef:
    """A normalized image reference: `docker.io/library/busybox:latest`, `host:5000/a/b@sha256:…`."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The canonical name, also the containerd image record's name."""
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        return self.name


def parse_reference(text: str) -> ImageRef:
    """Normalize a reference the way Docker does (`busybox` → `docker.io/library/busybox:latest`)."""
    original = text
    text = text.strip(" ")  # spaces only: a reference with a newline or tab is refused
    if not text:
        raise InvalidReference("empty image reference")
    digest = ""
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid image reference {original!r}: bad digest {digest!r}")
    tag = ""
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid image reference {original!r}: bad tag {tag!r}")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, path = first, rest
        if not _DOMAIN_RE.fullmatch(registry):
            raise InvalidReference(f"invalid image reference {original!r}: bad registry {registry!r}")
    else:
        registry, path = DOCKER_HUB, text
    if registry == "index.docker.io":
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if path.lower() != path:
        raise InvalidReference(f"invalid image reference {original!r}: repository name must be lowercase")
    if not _PATH_RE.fullmatch(path) or len(registry) + 1 + len(path) > 255:
        raise InvalidReference(f"invalid image reference {original!r}")
    if not tag and not digest:
        tag = "latest"
    return ImageRef(registry, path, tag, digest)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386", "i686": "386"}


def host_platform() -> Platform:
    """The platform images must match on this machine (linux/<arch>)."""
    machine = _platform.machine().lower()
    if machine.startswith("armv"):
        return Platform("linux", "arm", "v" + machine[4])
    return Platform("linux", _ARCH.get(machine, machine))


def registry_host(host: str) -> str:
    """A registry as logins name it: Docker Hub's aliases are one registry."""
    host = host.strip()
    return DOCKER_HUB if host.lower() in (DOCKER_HUB, "index.docker.io", DOCKER_HUB_API) else host


def check_registry_host(host: str) -> str:
    """`host[:port]` as a registry name, or InvalidReference saying why not (one line)."""
    text = host.strip()
    if not text or not _DOMAIN_RE.fullmatch(text) or len(text) > 255:
        raise InvalidReference(f"invalid registry {text!r}: expected HOST or HOST:PORT")
    return registry_host(text)


def parse_registry_ca(text: str) -> tuple[str, Path]:
    """`HOST[:PORT]=FILE` (the `--registry-ca` flag): the registry and its CA bundle's path."""
    host, sep, path = text.partition("=")
    if not sep or not path.strip():
        raise InvalidReference(f"--registry-ca must be HOST[:PORT]=FILE (got {text!r})")
    return check_registry_host(host), Path(path.strip())
