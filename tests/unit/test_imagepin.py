"""Images pinned by digest (ADR 34): which reference is looked up when, what is stored when the
lookup fails, and the control API's create and update with a scripted registry lookup on the
in-memory ports. The real registry is in tests/integration/test_image_digests.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.manager.controlapi import ControlService
from warren.manager.imagepin import LookupFailed, check_reference, pinned, to_resolve
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.server import ApiError
from warren.model import ServiceSpec
from warren.runtime.containerd.registry import Credentials

T = TypeVar("T")
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


class Registry:
    """A DigestLookup answering from a dict (tag reference -> digest); anything else fails."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags
        self.asked: list[str] = []
        self.logins: list[Credentials | None] = []

    def digest(self, image: str, credentials: Credentials | None = None) -> str:
        self.asked.append(image)
        self.logins.append(credentials)
        if image not in self.tags:
            raise LookupFailed(f"registry docker.io unreachable: host name not resolved ({image})")
        return self.tags[image]


def spec(image: str, **changes: Any) -> ServiceSpec:
    return ServiceSpec(name="web", image=image, **changes)


# -- the decision ------------------------------------------------------------------------------


def test_a_new_tag_is_resolved_and_an_operator_digest_is_kept() -> None:
    assert to_resolve(spec("app:1"), None, no_resolve=False) == "app:1"
    assert to_resolve(spec("host:5000/app"), None, no_resolve=False) == "host:5000/app"
    assert to_resolve(spec(f"app@{D1}"), None, no_resolve=False) is None
    assert to_resolve(spec(f"app:1@{D1}"), None, no_resolve=False) is None
    assert to_resolve(spec("app:1"), None, no_resolve=True) is None


def test_an_update_resolves_only_a_changed_image_or_a_forced_one() -> None:
    current = spec(f"app:1@{D1}")
    # Unrelated change: the pin stays, a re-pushed tag is not picked up.
    assert to_resolve(spec(f"app:1@{D1}", env={"A": "1"}), current, no_resolve=False) is None
    # --image with the same tag: resolved again.
    assert to_resolve(spec("app:1"), current, no_resolve=False) == "app:1"
    # --force: the tag of the pinned image is resolved again...
    assert to_resolve(spec(f"app:1@{D1}", force_update=1), current, no_resolve=False) == "app:1"
    # ...unless there is no tag to resolve, or the operator said not to.
    assert to_resolve(spec(f"app@{D1}", force_update=1), spec(f"app@{D1}"), no_resolve=False) is None
    assert to_resolve(spec(f"app:1@{D1}", force_update=1), current, no_resolve=True) is None
    # A digest the operator typed on update is kept as given.
    assert to_resolve(spec(f"app:2@{D2}"), current, no_resolve=False) is None


def test_an_unpinned_tag_given_again_is_resolved_again() -> None:
    current = spec("app:1")  # its lookup failed at create: stored as a tag
    # An unrelated update leaves it alone (no lookup, no warning on each update)...
    assert to_resolve(spec("app:1", env={"A": "1"}), current, no_resolve=False) is None
    # ...`--image app:1` names it again: looked up, so that it gets pinned now.
    assert to_resolve(spec("app:1"), current, no_resolve=False, image_given=True) == "app:1"
    assert to_resolve(spec("app:1"), current, no_resolve=True, image_given=True) is None
    # A digest given again is kept as given, not looked up.
    assert to_resolve(spec(f"app:1@{D1}"), spec(f"app:1@{D1}"), no_resolve=False, image_given=True) is None


def test_a_lookup_pins_and_a_failed_one_keeps_the_image_with_a_warning() -> None:
    registry = Registry({"app:1": D1})
    assert run(pinned(registry, spec("app:1"), None, False)).image == f"app:1@{D1}"
    # The exec runtime's images are in no registry: kept, with a warning, never an error.
    kept = run(pinned(registry, spec("exec"), None, False))
    assert kept.image == "exec"
    assert "could not be pinned" in kept.warning and "host name not resolved" in kept.warning
    # A forced re-resolution that fails keeps the old pin (the same bytes), and says so.
    old = spec(f"gone:1@{D1}")
    forced = run(pinned(registry, spec(f"gone:1@{D1}", force_update=1), old, False))
    assert forced.image == f"gone:1@{D1}"
    assert "stays pinned to " + D1 in forced.warning
    assert run(pinned(None, spec("app:1"), None, False)).image == "app:1"
    # A name so long that the pin would pass the spec's limit keeps its tag (and can be updated).
    long_name = "h.example/" + "a" * 200 + "/" + "b" * 180 + ":" + "t" * 100
    long = run(pinned(Registry({long_name: "sha512:" + "5" * 128}), spec(long_name), None, False))
    assert long.image == long_name and "over 512 characters" in long.warning


@pytest.mark.parametrize("image", ["App:1", "app:bad tag", "app@sha256:short", "host:5000/", "a//b"])
def test_a_malformed_reference_is_refused_with_one_line(image: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference") as raised:
        check_reference(image)
    assert "\n" not in str(raised.value)


# -- the control API ---------------------------------------------------------------------------


def pb_spec(image: str) -> pb.ServiceSpec:
    return pb.ServiceSpec(name="web", image=image, mode="replicated", replicas=1)


def test_create_and_update_store_the_pinned_image() -> None:
    registry = Registry({"app:1": D1})

    async def scenario() -> None:
        store = InMemoryState()
        control = ControlService(store, InMemoryRaft(store, "127.0.0.1:4243"), images=registry)
        created = await control.CreateService(cpb.CreateServiceRequest(spec=pb_spec("app:1")), None)
        assert created.spec.image == f"app:1@{D1}" and not created.warnings

        # The tag moves: an unrelated update keeps the pin...
        registry.tags["app:1"] = D2
        unrelated = pb.ServiceSpec()
        unrelated.CopyFrom(created.spec)
        unrelated.env["A"] = "1"
        updated = await control.UpdateService(cpb.UpdateServiceRequest(service="web", spec=unrelated), None)
        assert updated.spec.image == f"app:1@{D1}"
        # ...`--force` moves it to the new digest.
        forced = pb.ServiceSpec()
        forced.CopyFrom(updated.spec)
        forced.force_update += 1
        updated = await control.UpdateService(cpb.UpdateServiceRequest(service="web", spec=forced), None)
        assert updated.spec.image == f"app:1@{D2}"

        # --no-resolve-image keeps the tag, and an image in no registry is kept with a warning.
        plain = await control.CreateService(
            cpb.CreateServiceRequest(spec=pb.ServiceSpec(name="plain", image="app:1"), no_resolve_image=True), None
        )
        assert plain.spec.image == "app:1" and not plain.warnings
        exec_service = await control.CreateService(
            cpb.CreateServiceRequest(spec=pb.ServiceSpec(name="job", image="exec")), None
        )
        assert exec_service.spec.image == "exec"
        assert len(exec_service.warnings) == 1 and "could not be pinned" in exec_service.warnings[0]

        with pytest.raises(ApiError, match="invalid image reference") as refused:
            await control.CreateService(cpb.CreateServiceRequest(spec=pb.ServiceSpec(name="bad", image="App")), None)
        assert refused.value.code.name == "INVALID_ARGUMENT"

    run(scenario())
