"""Images pinned by digest (ADR 34), with real parts.

- The containerd driver: a node that has a tag locally but not the pinned digest pulls the
  digest (the re-pushed bytes), and an image loaded with `image import` whose digest is the
  pinned one runs with no registry at all.
- The deployment rig (tests/fixtures/deploy_rig.py: a real manager, containerd, registry and
  published port): `web:live` is v1 when the service is created, then v2 is pushed under the
  same tag. The running service stays on v1's digest, through an unrelated update too;
  `service update --force` resolves the tag again and every task moves to v2's digest, and
  `service rollback` returns to v1's digest although the tag names v2.
  `--no-resolve-image` keeps the tag, and a malformed reference is refused with one line, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures import registry as _registry
from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import BusyboxImage, WebImage, build_web_images, web_page
from tests.fixtures.plugin import unavailable
from tests.fixtures.ports import free_port
from tests.fixtures.registry import LocalRegistry
from tests.integration.harness import Manager
from warren.agent.runtime import RuntimeFailure
from warren.manager.imagepin import RegistryDigests
from warren.network import links
from warren.runtime.containerd import api
from warren.runtime.containerd.driver import ContainerdRuntime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def web_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, WebImage]:
    return build_web_images(tmp_path_factory.mktemp("web-images"), ("v1", "v2"))


@pytest.fixture
def runtime(containerd: ContainerdDaemon, tmp_path: Path) -> Iterator[ContainerdRuntime]:
    rt = ContainerdRuntime(containerd.socket, tmp_path / "state", cgroup_parent=containerd.cgroup_parent)
    try:
        yield rt
    finally:
        rt.close()


def test_a_node_with_the_tag_pulls_the_pinned_digest_and_an_import_needs_no_registry(
    containerd: ContainerdDaemon,
    make_registry: Callable[[], LocalRegistry],
    web_images: dict[str, WebImage],
    runtime: ContainerdRuntime,
    tmp_path: Path,
) -> None:
    registry = make_registry()
    tag = f"{registry.host}/web:live"
    registry.push(web_images["v1"].archive, "web:live")
    v1 = RegistryDigests().digest(tag)
    assert runtime.images.ensure(tag).manifest_digest == v1  # the node has the tag: v1

    registry.push(web_images["v2"].archive, "web:live")  # the tag moves
    v2 = RegistryDigests().digest(tag)
    assert v2 != v1
    assert runtime.images.ensure(tag).manifest_digest == v1  # the tag alone: the local copy, stale
    pinned = runtime.images.ensure(f"{tag}@{v2}")
    assert pinned.manifest_digest == v2 and pinned.name == f"{tag}@{v2}"  # the digest is pulled
    # What the pinned image runs is v2's bytes: its config says so (v1 and v2 differ in a layer).
    assert pinned.diff_ids != runtime.images.ensure(tag).diff_ids

    # An air-gapped node: the image exported from the registry and imported under its tag.
    archive = tmp_path / "exported.tar"
    registry.skopeo(
        [
            *("skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"),
            *(f"docker://{tag}", f"oci-archive:{archive}:{tag}"),
        ]
    )
    registry.stop()
    # A node that has never seen the pinned name: a namespace of its own in the test's containerd
    # (deleting the pinned record here instead would race containerd's garbage collection).
    offline = ContainerdRuntime(
        containerd.socket, tmp_path / "offline", namespace="warren-offline", cgroup_parent=containerd.cgroup_parent
    )
    try:
        assert offline.import_archive(archive) == [tag]
        found = offline.images.ensure(f"{tag}@{v2}")  # no registry: the import holds that digest
        assert found.manifest_digest == v2
        with pytest.raises(RuntimeFailure, match="unreachable"):
            offline.images.ensure(f"{tag}@{v1}")  # another digest is not taken from the tag
    finally:
        with contextlib.suppress(grpc.RpcError):
            offline.client.images.Delete(api.images_pb2.DeleteImageRequest(name=tag), metadata=offline.client.md())
        offline.close()


# -- the deployment rig ------------------------------------------------------------------------


def _registry_digest(rig: DeployRig, reference: str) -> str:
    """What the rig's registry says `reference` is, asked by skopeo inside the node's namespace."""
    argv = ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{reference}"]
    env = {**os.environ, "TMPDIR": str(rig.registry.base), "HOME": str(rig.registry.base)}
    done = subprocess.run(
        links.nsenter(rig.netns, argv), capture_output=True, text=True, timeout=60, env=env, check=True
    )
    return done.stdout.strip()


def _image(rig: DeployRig, service: str) -> str:
    return str(json.loads(rig.ok("service", "inspect", service, "--format", "json"))["spec"]["image"])


def _version(rig: DeployRig, service: str) -> int:
    return int(json.loads(rig.ok("service", "inspect", service, "--format", "json"))["version"])


def _versions(rig: DeployRig, service: str) -> set[int]:
    return {int(t["spec_version"]) for t in rig.running(service)}


def test_a_re_pushed_tag_is_deployed_only_by_force_and_every_task_runs_one_digest(rig: DeployRig) -> None:
    live = f"{rig.registry.host}/web:live"
    rig.registry.push(rig.images["v1"].archive, "web:live")
    v1 = _registry_digest(rig, live)
    try:
        rig.create_web("web", "live", 2)  # the image is the tag web:live
        assert _image(rig, "web") == f"{live}@{v1}"
        rig.wait_serving(web_page("v1"), "web", 2)

        rig.registry.push(rig.images["v2"].archive, "web:live")  # the tag moves to v2
        v2 = _registry_digest(rig, live)
        assert v2 != v1
        # An update that does not touch the image: a new version, still v1's bytes everywhere.
        rig.ok("service", "update", "web", "--env-add", "A=1", "--timeout", "120s")
        assert _image(rig, "web") == f"{live}@{v1}"
        rig.wait_serving(web_page("v1"), "web", 2)
        assert _versions(rig, "web") == {_version(rig, "web")}  # every task runs the pinned spec

        # --force resolves the tag again: every task moves to v2's digest.
        rig.ok("service", "update", "web", "--force", "--timeout", "120s")
        assert _image(rig, "web") == f"{live}@{v2}"
        rig.wait_serving(web_page("v2"), "web", 2)
        assert _versions(rig, "web") == {_version(rig, "web")}

        # A rollback returns to v1's bytes, although the tag now names v2.
        rig.ok("service", "rollback", "web", "--timeout", "120s")
        assert _image(rig, "web") == f"{live}@{v1}"
        rig.wait_serving(web_page("v1"), "web", 2)

        # --no-resolve-image keeps the tag as given.
        rig.ok("service", "create", "plain", "--image", live, "--no-resolve-image", "--detach")
        assert _image(rig, "plain") == live

        # A malformed reference: one line, exit 2, nothing created.
        bad = rig.cli("service", "create", "bad", "--image", "Web:Live", "--detach")
        assert bad.returncode == 2, (bad.returncode, bad.stderr)
        assert bad.stderr.count("\n") == 1 and "invalid image reference" in bad.stderr, bad.stderr
        assert "bad" not in rig.services()
    finally:
        for name in ("web", "plain"):
            rig.tasks(name, history=True)  # the ids the rig sweeps if removal fails


# -- a registry that cannot be reached, and a manager that asks none -----------------------------


@pytest.mark.parametrize("resolve", [True, False], ids=["resolving", "no-resolve-images"])
def test_an_unreachable_registry_keeps_the_tag_with_a_warning_and_a_manager_may_ask_none(
    tmp_path: Path, resolve: bool
) -> None:
    image = f"127.0.0.1:{free_port()}/app:1"  # nothing listens there: connection refused
    manager = Manager(tmp_path, resolve_images=resolve)
    try:
        manager.start()
        created = manager.cli("service", "create", "app", "--image", image, "--detach")
        assert created.returncode == 0, created.stderr
        assert manager.cli_json("service", "inspect", "app")["spec"]["image"] == image  # type: ignore[index]
        warnings = [line for line in created.stderr.splitlines() if line.startswith("warning:")]
        if resolve:
            assert len(warnings) == 1 and "could not be pinned" in warnings[0] and "refused" in warnings[0], warnings
        else:
            assert warnings == []
    finally:
        manager.stop()


def test_a_tag_not_pinned_at_create_is_pinned_by_update_image_with_the_same_tag(
    tmp_path: Path, busybox_image: BusyboxImage
) -> None:
    unavailable(_registry.missing_reason())
    (tmp_path / "registry").mkdir()
    registry = LocalRegistry(tmp_path / "registry")  # its port is chosen; nothing listens there yet
    image = f"{registry.host}/busybox:latest"
    (tmp_path / "manager").mkdir()
    manager = Manager(tmp_path / "manager", resolve_images=True)
    try:
        manager.start()
        created = manager.cli("service", "create", "app", "--image", image, "--detach")
        assert created.returncode == 0 and "could not be pinned" in created.stderr, created.stderr
        # Still no registry: the same tag is looked up again, still in vain, and nothing changes.
        again = manager.cli("service", "update", "app", "--image", image, "--detach")
        assert again.returncode == 0, again.stderr
        assert "could not be pinned" in again.stderr and "app: nothing to change" in again.stderr, again.stderr
        assert manager.cli_json("service", "inspect", "app")["version"] == "1"  # type: ignore[index]

        registry.start()
        registry.push(busybox_image.archive, "busybox:latest")
        updated = manager.cli("service", "update", "app", "--image", image, "--detach")
        assert updated.returncode == 0 and "warning" not in updated.stderr, updated.stderr
        inspected = manager.cli_json("service", "inspect", "app")
        digest = RegistryDigests().digest(image)
        assert inspected["spec"]["image"] == f"{image}@{digest}", inspected  # type: ignore[index]
        assert inspected["version"] == "2"  # type: ignore[index]
    finally:
        manager.stop()
        registry.close()
