"""The containerd driver's pure parts: references, chainIDs, platform selection, the OCI spec."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.agent.runtime import ContainerSpec
from warren.model import Resources
from warren.runtime.containerd.images import chain_ids
from warren.runtime.containerd.oci import SpecError, build_spec, exec_process, merge_env, parse_user
from warren.runtime.containerd.reference import InvalidReference, Platform, parse_reference
from warren.runtime.containerd.registry import RegistryError, _parse_challenge, is_loopback, select_manifest

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "name", "api_host", "reference"),
    [
        ("busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", "latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "registry-1.docker.io", "1.36"),
        ("library/busybox", "docker.io/library/busybox:latest", "registry-1.docker.io", "latest"),
        ("me/app:v1", "docker.io/me/app:v1", "registry-1.docker.io", "v1"),
        ("index.docker.io/me/app", "docker.io/me/app:latest", "registry-1.docker.io", "latest"),
        ("127.0.0.1:5000/busybox:latest", "127.0.0.1:5000/busybox:latest", "127.0.0.1:5000", "latest"),
        ("localhost/a/b/c", "localhost/a/b/c:latest", "localhost", "latest"),
        ("ghcr.io/o/r@" + DIGEST, "ghcr.io/o/r@" + DIGEST, "ghcr.io", DIGEST),
        ("host:5000/r:tag@" + DIGEST, "host:5000/r:tag@" + DIGEST, "host:5000", DIGEST),
        ("[::1]:5000/r", "[::1]:5000/r:latest", "[::1]:5000", "latest"),
        (
            "my-registry.example.com/a_b/c-d:1.0-rc.1",
            "my-registry.example.com/a_b/c-d:1.0-rc.1",
            "my-registry.example.com",
            "1.0-rc.1",
        ),
    ],
)
def test_references_normalize_like_docker(text: str, name: str, api_host: str, reference: str) -> None:
    ref = parse_reference(text)
    assert (ref.name, ref.api_host, ref.reference) == (name, api_host, reference)
    assert parse_reference(ref.name) == ref  # normalization is idempotent


def test_digest_only_reference_has_no_tag() -> None:
    ref = parse_reference("busybox@" + DIGEST)
    assert (ref.tag, ref.digest, ref.name) == ("", DIGEST, "docker.io/library/busybox@" + DIGEST)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Busybox",
        "busybox:",
        "busybox:bad/tag",
        "busybox@sha256:abc",
        "a//b",
        "-a/b",
        "busybox@md5:" + "a" * 32,
        "host:5000/UPPER",
    ],
)
def test_invalid_references_are_rejected(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_loopback_and_auth_challenges() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com:5000") and not is_loopback("10.0.0.1")
    scheme, params = _parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:a/b:pull",
    }


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = _sha("a"), _sha("b"), _sha("c")
    ab = _sha(f"{a} {b}")
    assert chain_ids([]) == []
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b, c]) == [a, ab, _sha(f"{ab} {c}")]


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6))
def test_chain_ids_of_a_prefix_are_a_prefix(layers: list[str]) -> None:
    diff_ids = [_sha(x) for x in layers]
    full = chain_ids(diff_ids)
    for k in range(len(diff_ids) + 1):
        assert chain_ids(diff_ids[:k]) == full[:k]
    assert len(set(full)) == len(full) or len(set(diff_ids)) < len(diff_ids)


def _entry(arch: str, variant: str = "", os: str = "linux", digest: str = "") -> dict[str, object]:
    platform = {"os": os, "architecture": arch} | ({"variant": variant} if variant else {})
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest or f"{os}/{arch}/{variant}",
        "size": 1,
        "platform": platform,
    }


INDEX = {
    "manifests": [
        _entry("unknown", os="unknown", digest="attestation"),
        _entry("arm", "v6"),
        _entry("arm64", "v8"),
        _entry("amd64"),
        _entry("arm", "v7"),
        _entry("amd64", os="windows"),
    ]
}


@pytest.mark.parametrize(
    ("want", "digest"),
    [
        (Platform("linux", "amd64"), "linux/amd64/"),
        (Platform("linux", "arm64"), "linux/arm64/v8"),
        (Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
        (Platform("linux", "arm", "v7"), "linux/arm/v7"),
        (Platform("linux", "arm"), "linux/arm/v7"),
        (Platform("windows", "amd64"), "windows/amd64/"),
    ],
)
def test_manifest_list_selects_the_platform(want: Platform, digest: str) -> None:
    assert select_manifest(INDEX, want)["digest"] == digest


def test_an_armv7_host_falls_back_to_v6_and_arm64_accepts_no_variant() -> None:
    only_v6 = {"manifests": [_entry("arm", "v6"), _entry("amd64")]}
    assert select_manifest(only_v6, Platform("linux", "arm", "v7"))["digest"] == "linux/arm/v6"
    plain_arm64 = {"manifests": [_entry("arm64")]}
    assert select_manifest(plain_arm64, Platform("linux", "arm64"))["digest"] == "linux/arm64/"


def test_no_matching_platform_is_a_permanent_error_that_lists_what_exists() -> None:
    with pytest.raises(RegistryError) as err:
        select_manifest(INDEX, Platform("linux", "s390x"))
    assert err.value.permanent
    assert "linux/s390x" in err.value.message and "linux/arm64/v8" in err.value.message


def test_an_index_of_one_unlabelled_manifest_is_that_manifest() -> None:
    assert (
        select_manifest({"manifests": [{"digest": "only", "size": 1}]}, Platform("linux", "amd64"))["digest"] == "only"
    )
    with pytest.raises(RegistryError):
        select_manifest({"manifests": []}, Platform("linux", "amd64"))


IMAGE = {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "A=image", "B=image"], "WorkingDir": "/app"}


def _spec(**kw: object) -> ContainerSpec:
    return ContainerSpec(task_id="t1", image="busybox", **kw)  # type: ignore[arg-type]


def _process(spec: ContainerSpec, image: dict[str, object] = IMAGE) -> dict[str, object]:
    return build_spec(spec, image, cgroups_path="/warren/t1", host_files=[])["process"]  # type: ignore[return-value]


def test_command_and_args_follow_docker_rules() -> None:
    assert _process(_spec())["args"] == ["/entry", "--serve"]
    assert _process(_spec(args=("--debug",)))["args"] == ["/entry", "--debug"]
    assert _process(_spec(command=("sh",)))["args"] == ["sh"]  # a new entrypoint drops Cmd
    assert _process(_spec(command=("sh",), args=("-c", "x")))["args"] == ["sh", "-c", "x"]
    with pytest.raises(SpecError, match="no command"):
        _process(_spec(), {})


def test_env_cwd_and_user() -> None:
    process = _process(_spec(env={"B": "spec", "C": "spec"}, user="1000:100"))
    assert process["env"] == ["PATH=/bin", "A=image", "B=spec", "HOSTNAME=t1", "C=spec"]
    assert process["cwd"] == "/app"
    assert process["user"] == {"uid": 1000, "gid": 100}
    assert merge_env([], {})[0].startswith("PATH=/usr/local/sbin:")
    assert _process(_spec(cwd="/srv"))["cwd"] == "/srv"
    with pytest.raises(SpecError):
        _process(_spec(cwd="relative"))
    assert parse_user("") == (0, 0) and parse_user("root") == (0, 0) and parse_user("7") == (7, 7)
    with pytest.raises(SpecError, match="numeric"):
        parse_user("nobody")


def test_limits_rootfs_namespaces_and_mounts() -> None:
    spec = build_spec(
        _spec(limits=Resources(nano_cpus=1_500_000_000, memory_bytes=128 << 20), read_only_rootfs=True),
        IMAGE,
        cgroups_path="/warren/t1",
        host_files=["/etc/resolv.conf"],
    )
    linux = spec["linux"]
    assert linux["cgroupsPath"] == "/warren/t1"  # type: ignore[index]
    assert linux["resources"]["memory"] == {"limit": 128 << 20}  # type: ignore[index]
    assert linux["resources"]["cpu"] == {"quota": 150_000, "period": 100_000}  # type: ignore[index]
    assert {n["type"] for n in linux["namespaces"]} == {"pid", "ipc", "uts", "mount"}  # type: ignore[index]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    destinations = [m["destination"] for m in spec["mounts"]]  # type: ignore[union-attr,index]
    for path in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/etc/resolv.conf"):
        assert path in destinations
    unlimited = build_spec(_spec(), IMAGE, cgroups_path="/x", host_files=[])["linux"]["resources"]  # type: ignore[index]
    assert "memory" not in unlimited and "cpu" not in unlimited


def test_a_task_network_namespace_joins_the_spec() -> None:
    """With the overlay on, a task joins the namespace the agent made for it (ADR 17)."""
    spec = build_spec(_spec(netns="/run/netns/wt-t1"), IMAGE, cgroups_path="/x", host_files=[])
    namespaces = spec["linux"]["namespaces"]  # type: ignore[index]
    assert {"type": "network", "path": "/run/netns/wt-t1"} in namespaces  # type: ignore[operator]
    assert len(namespaces) == 5  # type: ignore[arg-type]
    with_dns = build_spec(
        _spec(netns="/run/netns/wt-t1", resolv_conf="/var/lib/w/network/resolv.conf"),
        IMAGE,
        cgroups_path="/x",
        host_files=["/etc/resolv.conf", "/etc/hosts"],
    )
    resolv = [m for m in with_dns["mounts"] if m["destination"] == "/etc/resolv.conf"]  # type: ignore[union-attr,index]
    assert [m["source"] for m in resolv] == ["/var/lib/w/network/resolv.conf"]  # the node's DNS, not the host's


def test_exec_process_keeps_the_container_s_settings() -> None:
    container = build_spec(_spec(env={"X": "1"}), IMAGE, cgroups_path="/x", host_files=[])
    process = exec_process(container, ["cat", "/etc/passwd"])
    assert process["args"] == ["cat", "/etc/passwd"]
    assert process["env"] == container["process"]["env"]  # type: ignore[index]
    assert container["process"]["args"] == ["/entry", "--serve"]  # type: ignore[index]  # not mutated
