"""RegistryClient's auth, redirect and verification paths against an in-process fake on 127.0.0.1.

Debian's docker-registry runs without auth in the driver tests; this fake covers what it does
not: bearer-token challenges, basic auth, redirects to blob storage (which must not receive
the registry credential), and digests that do not match.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from warren.runtime.containerd.reference import Platform, parse_reference
from warren.runtime.containerd.registry import (
    OCI_MANIFEST,
    Credentials,
    RegistryClient,
    RegistryError,
    StaticCredentials,
)

pytestmark = pytest.mark.integration

BLOB = b"layer bytes"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
LIE_DIGEST = "sha256:" + "0" * 64
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": BLOB_DIGEST, "size": len(BLOB)}, "layers": []}
).encode()
BASIC = "Basic " + base64.b64encode(b"alice:secret").decode()


class _Fake(BaseHTTPRequestHandler):
    port = 0
    seen: list[tuple[str, str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append((self.path, auth))
        realm = f"http://127.0.0.1:{self.port}/token"
        if self.path.startswith("/token"):
            ok = auth == BASIC and "scope=repository%3Abearer%2Fimg%3Apull" in self.path
            return self._send(200, b'{"token": "T0K"}') if ok else self._send(401)
        if self.path.startswith("/v2/bearer/img/"):
            if auth != "Bearer T0K":
                challenge = f'Bearer realm="{realm}",service="fake",scope="repository:bearer/img:pull"'
                return self._send(401, headers={"WWW-Authenticate": challenge})
            if "/manifests/" in self.path:
                return self._send(200, MANIFEST, {"Content-Type": OCI_MANIFEST})
            if self.path.endswith(f"/blobs/{BLOB_DIGEST}"):
                return self._send(307, headers={"Location": f"http://127.0.0.1:{self.port}/storage/blob"})
            if self.path.endswith(f"/blobs/{LIE_DIGEST}"):
                return self._send(200, BLOB)
        if self.path == "/storage/blob":
            return self._send(400) if auth else self._send(200, BLOB)  # storage rejects a second credential
        if self.path.startswith("/v2/basic/img/"):
            if auth != BASIC:
                return self._send(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
            return self._send(200, MANIFEST, {"Content-Type": OCI_MANIFEST})
        return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')


@pytest.fixture
def fake() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    _Fake.port = server.server_address[1]
    _Fake.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{_Fake.port}"
    finally:
        server.shutdown()
        server.server_close()


def test_bearer_token_challenge_redirect_and_verified_blob(fake: str) -> None:
    client = RegistryClient(credentials=StaticCredentials({fake: Credentials("alice", "secret")}))
    ref = parse_reference(f"{fake}/bearer/img:latest")
    desc, body = client.resolve(ref, Platform("linux", "amd64"))
    assert body == MANIFEST and desc["digest"] == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert b"".join(client.iter_blob(ref, {"digest": BLOB_DIGEST, "size": len(BLOB)})) == BLOB
    assert ("/storage/blob", "") in _Fake.seen  # the token was not forwarded across the redirect
    with pytest.raises(RegistryError, match="hashing to"):
        b"".join(client.iter_blob(ref, {"digest": LIE_DIGEST, "size": len(BLOB)}))


def test_basic_auth_and_missing_credentials(fake: str) -> None:
    ref = parse_reference(f"{fake}/basic/img:latest")
    media_type, body, _ = RegistryClient(
        credentials=StaticCredentials({fake: Credentials("alice", "secret")})
    ).get_manifest(ref)
    assert (media_type, body) == (OCI_MANIFEST, MANIFEST)
    with pytest.raises(RegistryError) as err:
        RegistryClient().get_manifest(ref)
    assert err.value.permanent and "wants credentials" in err.value.message
    with pytest.raises(RegistryError) as err:
        RegistryClient().get_manifest(parse_reference(f"{fake}/bearer/img:latest"))  # no creds: token refused
    assert err.value.permanent and "denied" in err.value.message


def test_not_found_and_pinned_digest_mismatch(fake: str) -> None:
    with pytest.raises(RegistryError) as err:
        RegistryClient().get_manifest(parse_reference(f"{fake}/other/img:latest"))
    assert err.value.permanent and err.value.message == f"image {fake}/other/img:latest not found in registry"
    client = RegistryClient(credentials=StaticCredentials({fake: Credentials("alice", "secret")}))
    with pytest.raises(RegistryError, match="registry returned"):
        client.get_manifest(parse_reference(f"{fake}/bearer/img@{LIE_DIGEST}"))


def test_https_unless_loopback_or_insecure() -> None:
    client = RegistryClient(insecure=["10.1.2.3:5000"])
    assert client._base(parse_reference("10.1.2.3:5000/a")).startswith("http://")
    assert client._base(parse_reference("127.0.0.1:5000/a")).startswith("http://")
    assert client._base(parse_reference("registry.example.com/a")).startswith("https://")
    assert client._base(parse_reference("busybox")) == "https://registry-1.docker.io/v2/library/busybox"
