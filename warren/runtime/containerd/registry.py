"""A Registry HTTP API v2 client (urllib only, no extra dependency), and manifest selection.

`select_manifest` knows nothing about the network and is unit-tested directly; references are
parsed in warren.runtime.containerd.reference. `RegistryClient` fetches manifests and blobs with
digest verification, answers bearer-token and basic auth challenges with the credentials a
`CredentialStore` holds for the registry (ADR 43), verifies HTTPS against the system roots or
a private CA given per registry (`--registry-ca HOST=FILE`), and speaks plain HTTP only to
loopback and to registries the operator lists as insecure.
"""

from __future__ import annotations

import base64
import copy
import errno
import hashlib
import json
import re
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from warren.runtime.containerd.reference import ImageRef, Platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST))

MAX_MANIFEST_BYTES = 4 << 20
CHUNK = 1 << 20


class RegistryError(Exception):
    """A pull step failed. `permanent`: the same reference will fail again (not found, denied)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def _normalize(p: Platform) -> Platform:
    arch, variant = p.architecture.lower(), p.variant.lower()
    if arch == "aarch64":
        arch = "arm64"
    if arch in ("x86_64", "x86-64"):
        arch = "amd64"
    if arch == "arm64" and variant in ("", "8", "v8"):
        variant = "v8"
    if arch == "amd64" and variant in ("v1", "1"):
        variant = ""
    if arch == "arm" and variant == "":
        variant = "v7"
    return Platform(p.os.lower(), arch, variant)


def _compatible_variants(want: Platform) -> list[str]:
    """Variants that run on `want`, best first (an armv7 host also runs v6 and v5 images)."""
    if want.architecture == "arm" and re.fullmatch(r"v[5-8]", want.variant):
        return [f"v{n}" for n in range(int(want.variant[1]), 4, -1)]
    return [want.variant]


def select_manifest(index: Mapping[str, object], want: Platform) -> dict[str, object]:
    """Pick the manifest descriptor for `want` from an OCI index or Docker manifest list."""
    listed = index.get("manifests")
    manifests = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    if not manifests:
        raise RegistryError("image index lists no manifests", permanent=True)
    with_platform = [m for m in manifests if isinstance(m.get("platform"), dict)]
    if not with_platform and len(manifests) == 1:
        return manifests[0]
    target = _normalize(want)
    variants = _compatible_variants(target)
    best: tuple[int, dict[str, object]] | None = None
    for m in with_platform:
        p = m["platform"]
        have = _normalize(Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))))
        if (have.os, have.architecture) != (target.os, target.architecture) or have.variant not in variants:
            continue
        rank = variants.index(have.variant)
        if best is None or rank < best[0]:
            best = (rank, m)
    if best is None:
        available = sorted(
            {
                str(
                    Platform(
                        str(m["platform"].get("os", "")),
                        str(m["platform"].get("architecture", "")),
                        str(m["platform"].get("variant", "")),
                    )
                )
                for m in with_platform
            }
        )
        raise RegistryError(f"image has no {want} variant (it has: {', '.join(available) or 'none'})", permanent=True)
    return best[1]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _hasher(digest: str) -> hashlib._Hash:
    algorithm = digest.split(":", 1)[0]
    if algorithm not in ("sha256", "sha512"):
        raise RegistryError(f"unsupported digest algorithm in {digest}", permanent=True)
    return hashlib.new(algorithm)


def is_loopback(host: str) -> bool:
    """`host[:port]` names this machine (plain HTTP is then allowed without configuration)."""
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    return hostname in ("localhost", "::1") or hostname.startswith("127.")


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest)}
    return scheme.lower(), params


def _reason(exc: BaseException) -> str:
    """A short human reason for a network failure."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(reason, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return "host name not resolved"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({reason.verify_message}); give its CA with --registry-ca HOST=FILE"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason}); if it serves plain HTTP, list it as an insecure registry"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


@dataclass(frozen=True)
class Credentials:
    """A registry login. The password (or an identity token) is never shown: not in repr, not
    in a log line, not in an error."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def fingerprint(self) -> str:
        """Tells two logins apart without keeping the password in a cache key."""
        return hashlib.sha256(self.basic().encode()).hexdigest()


class CredentialStore(Protocol):
    """The one way credentials reach the client (ADR 43): the login for a registry (`host[:port]`,
    or `docker.io`), or None. The agent's store holds what its managers sent with its tasks;
    the manager's reads the replicated state."""

    def lookup(self, host: str) -> Credentials | None: ...


class StaticCredentials:
    """A CredentialStore over a map, read at each lookup (so a login added to it counts)."""

    def __init__(self, logins: Mapping[str, Credentials] | None = None) -> None:
        self._logins: Mapping[str, Credentials] = logins if logins is not None else {}

    def lookup(self, host: str) -> Credentials | None:
        return self._logins.get(host)


NO_CREDENTIALS = StaticCredentials()


class _Layered:
    def __init__(self, first: Mapping[str, Credentials], then: CredentialStore) -> None:
        self._first, self._then = first, then

    def lookup(self, host: str) -> Credentials | None:
        return self._first.get(host) or self._then.lookup(host)


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts only `ca_file` (a PEM bundle); ValueError if unreadable."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the registry CA {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None


class RegistryClient:
    """Fetches manifests and blobs from Registry API v2 servers.

    `credentials` answers basic challenges and is sent to bearer-token endpoints; `ca_files` maps
    a registry (or a token server's host) to the CA bundle its HTTPS certificate must chain to
    (others use the system roots). Thread-safe.
    """

    def __init__(
        self,
        insecure: Iterable[str] = (),
        credentials: CredentialStore = NO_CREDENTIALS,
        timeout: float = 30.0,
        user_agent: str = "warren-agent",
        ca_files: Mapping[str, Path] | None = None,
    ) -> None:
        self._insecure = frozenset(insecure)
        self._credentials = credentials
        self._timeout = timeout
        self._user_agent = user_agent
        # (registry, repository, login fingerprint) -> the Authorization that last worked: a
        # logout or another login never reuses a token obtained with other credentials.
        self._tokens: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._default = urllib.request.build_opener()
        self._private_ca: dict[str, tuple[urllib.request.OpenerDirector, urllib.request.OpenerDirector]] = {}
        for host, ca_file in (ca_files or {}).items():
            handler = urllib.request.HTTPSHandler(context=tls_context(ca_file))
            self._private_ca[host] = (
                urllib.request.build_opener(urllib.request.ProxyHandler({}), handler),
                urllib.request.build_opener(handler),
            )

    def _opener(self, url: str) -> urllib.request.OpenerDirector:
        """No proxy for loopback; the private CA of the URL's host, if it has one."""
        host = urllib.parse.urlsplit(url).netloc
        direct = is_loopback(host)
        private = self._private_ca.get(host)
        if private is not None:
            return private[0] if direct else private[1]
        return self._direct if direct else self._default

    def with_login(self, host: str, credentials: Credentials) -> RegistryClient:
        """This client (its settings, connections and tokens) pulling from `host` as `credentials`:
        one task's or one service's own login, before the store's."""
        clone = copy.copy(self)
        clone._credentials = _Layered({host: credentials}, self._credentials)
        return clone

    def _login(self, ref: ImageRef) -> Credentials | None:
        return self._credentials.lookup(ref.registry) or (
            self._credentials.lookup(ref.api_host) if ref.api_host != ref.registry else None
        )

    def _base(self, ref: ImageRef) -> str:
        host = ref.api_host
        # A registry given a CA speaks HTTPS, on loopback too (a test CA on 127.0.0.1).
        plain = (
            (is_loopback(host) and host not in self._private_ca)
            or host in self._insecure
            or ref.registry in self._insecure
        )
        return f"{'http' if plain else 'https'}://{host}/v2/{ref.repository}"

    def _open(self, ref: ImageRef, url: str, accept: str = "") -> urllib.response.addinfourl:
        """GET with auth: one retry after answering a 401 challenge."""
        creds = self._login(ref)
        key = (ref.registry, ref.repository, creds.fingerprint() if creds else "")
        for attempt in range(2):
            request = urllib.request.Request(url, headers={"User-Agent": self._user_agent})
            if accept:
                request.add_header("Accept", accept)
            with self._lock:
                authorization = self._tokens.get(key)
            if authorization:
                # Not forwarded on redirects: blob storage backends reject a second credential.
                request.add_unredirected_header("Authorization", authorization)
            try:
                return self._opener(url).open(request, timeout=self._timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0:
                    challenge = exc.headers.get("WWW-Authenticate", "")
                    exc.close()
                    authorization = self._answer(ref, challenge, creds)
                    with self._lock:
                        self._tokens[key] = authorization
                    continue
                raise
            except (urllib.error.URLError, OSError) as exc:
                raise RegistryError(f"registry {ref.registry} unreachable: {_reason(exc)}") from exc
        raise AssertionError("unreachable")

    def _answer(self, ref: ImageRef, challenge: str, creds: Credentials | None) -> str:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if not creds:
                raise RegistryError(
                    f"pull access denied for {ref}: registry {ref.registry} wants credentials "
                    f"(warren registry login {ref.registry})",
                    permanent=True,
                )
            return creds.basic()
        if scheme != "bearer" or "realm" not in params:
            raise RegistryError(f"registry {ref.registry}: unsupported auth challenge {challenge!r}", permanent=True)
        query = {"scope": params.get("scope") or f"repository:{ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"User-Agent": self._user_agent})
        if creds:
            request.add_header("Authorization", creds.basic())
        try:
            with self._opener(url).open(request, timeout=self._timeout) as resp:
                body = json.loads(resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            why = "credentials refused" if creds else f"no credentials (warren registry login {ref.registry})"
            raise RegistryError(
                f"pull access denied for {ref}: {why}; token endpoint said HTTP {exc.code}", True
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"registry {ref.registry} auth server unreachable: {_reason(exc)}") from exc
        except ValueError as exc:
            raise RegistryError(f"registry {ref.registry}: bad token response") from exc
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"registry {ref.registry}: token response has no token")
        return f"Bearer {token}"

    def _http_error(self, ref: ImageRef, exc: urllib.error.HTTPError, what: str) -> RegistryError:
        if exc.code == 404:
            return RegistryError(f"image {ref} not found in registry", permanent=True)
        if exc.code == 400 and self._base(ref).startswith("http:"):  # Go's answer to HTTP on an HTTPS port
            return RegistryError(
                f"registry {ref.registry} refused plain HTTP (HTTP 400) fetching {what} of {ref}; if it serves "
                f"HTTPS, give its CA with --registry-ca {ref.registry}=FILE",
                permanent=True,
            )
        if exc.code in (401, 403):
            why = "credentials refused" if exc.code == 401 and self._login(ref) else "not allowed"
            return RegistryError(f"pull access denied for {ref}: {why} (HTTP {exc.code})", permanent=True)
        return RegistryError(f"registry {ref.registry}: HTTP {exc.code} fetching {what} of {ref}")

    def get_manifest(self, ref: ImageRef, reference: str = "") -> tuple[str, bytes, str]:
        """(media type, raw bytes, digest) of a manifest or index; a digest reference is verified."""
        reference = reference or ref.reference
        try:
            with self._open(ref, f"{self._base(ref)}/manifests/{reference}", accept=ACCEPT) as resp:
                body = resp.read(MAX_MANIFEST_BYTES + 1)
                content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        except urllib.error.HTTPError as exc:
            raise self._http_error(ref, exc, "the manifest") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"registry {ref.registry} unreachable: {_reason(exc)}") from exc
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest of {ref} is larger than {MAX_MANIFEST_BYTES} bytes", permanent=True)
        if reference.startswith(("sha256:", "sha512:")):
            digest = digest_of(body, reference.split(":", 1)[0])
            if digest != reference:
                raise RegistryError(f"manifest of {ref}: registry returned {digest}, not {reference}")
        else:
            digest = digest_of(body)
        try:
            media_type = json.loads(body).get("mediaType") or content_type
        except ValueError as exc:
            raise RegistryError(f"manifest of {ref} is not JSON", permanent=True) from exc
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise RegistryError(f"image {ref}: unsupported manifest type {media_type!r}", permanent=True)
        return media_type, body, digest

    def resolve(self, ref: ImageRef, want: Platform) -> tuple[dict[str, object], bytes]:
        """The platform-specific manifest of `ref`: (its descriptor, its raw bytes)."""
        media_type, body, digest = self.get_manifest(ref)
        if media_type in INDEX_TYPES:
            chosen = select_manifest(json.loads(body), want)
            media_type, body, digest = self.get_manifest(ref, str(chosen["digest"]))
            if media_type in INDEX_TYPES:
                raise RegistryError(f"image {ref}: nested image indexes are not supported", permanent=True)
        return {"mediaType": media_type, "digest": digest, "size": len(body)}, body

    def read_blob(self, ref: ImageRef, descriptor: Mapping[str, Any], limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (an image config), verified."""
        if int(descriptor.get("size", 0)) > limit:
            raise RegistryError(f"blob {descriptor.get('digest')} of {ref} is larger than {limit} bytes", True)
        return b"".join(self.iter_blob(ref, descriptor))

    def iter_blob(self, ref: ImageRef, descriptor: Mapping[str, Any]) -> Iterator[bytes]:
        """Stream a blob in chunks; raises RegistryError at the end if size or digest do not match."""
        digest, size = str(descriptor["digest"]), int(descriptor.get("size", -1))
        hasher = _hasher(digest)
        received = 0
        try:
            with self._open(ref, f"{self._base(ref)}/blobs/{digest}") as resp:
                while chunk := resp.read(CHUNK):
                    hasher.update(chunk)
                    received += len(chunk)
                    if size >= 0 and received > size:
                        raise RegistryError(f"blob {digest} of {ref} is larger than its descriptor says")
                    yield chunk
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RegistryError(f"blob {digest} of image {ref} not found in registry", permanent=True) from exc
            raise self._http_error(ref, exc, f"blob {digest}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"registry {ref.registry} unreachable: {_reason(exc)}") from exc
        actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if actual != digest or (size >= 0 and received != size):
            raise RegistryError(f"blob {digest} of {ref}: received {received} bytes hashing to {actual}")
