"""The Control API's stack methods (#14, ADR 49): deploy (or plan), list, remove.

Mixed into ControlService, whose `_store`, `_propose`, `_images`, `_keyring` and
`_keyed_cluster` they use. A deploy is checked whole (warren.stack.check), turned into one
`ApplyStack` command (images pinned, secrets sealed, ids given to what is new), judged by the
pure handler on the state as read (the plan, and a refusal that costs no Raft entry), then
proposed as one entry: the whole stack or nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import grpc
import msgspec

from warren import commands
from warren.api import names, stackconvert
from warren.api.v1 import control_pb2 as cpb
from warren.commands.stacks import changed_object, in_stack
from warren.ids import new_id
from warren.manager.imagepin import DigestLookup, check_reference, pinned, split_digest
from warren.manager.secretkeys import KeyRing, SecretKeyError
from warren.manager.server import ApiError, check_result, invalid
from warren.model import ClusterInfo, Config, Network, Secret, Service, ServiceDependency, ServiceSpec, Volume
from warren.stack.check import check_stack, unlabelled, unsupported_message
from warren.stack.plan import plan_stack
from warren.stack.spec import STACK_LABEL, StackSpec
from warren.state import ClusterState, Delete
from warren.text import shown
from warren.validate import ValidationError, check_name

if TYPE_CHECKING:
    from warren.manager.ports import StateReader


class StacksControl:
    """Stacks, for ControlService (which provides what is declared here)."""

    _store: StateReader
    _keyring: KeyRing
    _images: DigestLookup | None

    if TYPE_CHECKING:

        async def _propose(self, command: commands.Command) -> commands.Result: ...

        async def _keyed_cluster(self) -> ClusterInfo: ...

    async def DeployStack(self, request: cpb.DeployStackRequest, context: object) -> cpb.DeployStackResponse:
        try:
            stack = stackconvert.stack_from_pb(request.stack)
            check_stack(stack, request.allow_unsupported)
            for service in stack.services:
                check_reference(service.spec.image)
        except (names.ConversionError, ValidationError, ValueError) as exc:
            raise invalid(str(exc)) from None
        warnings = [unsupported_message(stack).split("; deploy anyway")[0]] if stack.unsupported else []
        command = await self._stack_command(stack, request.prune, warnings, dry_run=request.dry_run)
        if (too_large := commands.oversize_message(command)) is not None:
            # One entry is what makes it all or nothing (ADR 49): a stack past it is refused whole.
            raise invalid(f"stack {stack.name} cannot be deployed as one entry: {too_large}")
        with self._store.read() as state:
            view = state
            if state.cluster is not None and state.cluster.dek_wrapped != command.dek_wrapped and request.dry_run:
                # The first secret makes the cluster's data key; a plan only pretends it exists.
                view = state.copy()
                view.cluster = msgspec.structs.replace(state.cluster, dek_wrapped=command.dek_wrapped)
            planned = plan_stack(view, command)
        if isinstance(planned, commands.Result):
            check_result(planned)
            raise AssertionError("unreachable: a plan is a refusal or a plan")
        reply = stackconvert.plan_to_pb(planned)
        reply.warnings.extend(warnings)
        if request.dry_run:
            return reply
        if planned.changed:
            await self._propose(command)
        reply.deployed = True
        with self._store.read() as state:
            reply.service_ids.extend(
                sorted(s.id for s in state.services.values() if in_stack(s.spec.labels, stack.name))
            )
        return reply

    async def _stack_command(
        self, stack: StackSpec, prune: bool, warnings: list[str], dry_run: bool
    ) -> commands.ApplyStack:
        now = time.time()
        with self._store.read() as state:
            current = {s.spec.name: s for s in state.services.values()}
            secrets = {s.name: s for s in state.secrets.values()}
            cluster = state.cluster
        specs: list[ServiceSpec] = []
        to_pin: list[int] = []
        for item in stack.services:
            spec = unlabelled(item.spec)
            existing = current.get(spec.name)
            if existing is not None and split_digest(existing.spec.image)[0] == spec.image:
                # The tag it was pinned from: a re-deploy does not look it up again (no restart).
                spec = msgspec.structs.replace(spec, image=existing.spec.image)
            elif not dry_run:
                to_pin.append(len(specs))
            specs.append(spec)
        # Looked up together: a stack of many services must not wait for each registry in turn.
        lookups = await asyncio.gather(*(pinned(self._images, specs[i], None, False) for i in to_pin))
        for i, image in zip(to_pin, lookups, strict=True):
            specs[i] = msgspec.structs.replace(specs[i], image=image.image)
            if image.warning:
                warnings.append(image.warning)
        services = []
        for item, spec in zip(stack.services, specs, strict=True):
            existing = current.get(spec.name)
            service_id = existing.id if existing is not None else new_id()
            depends = tuple(ServiceDependency(d.service, d.condition.value, d.required) for d in item.depends_on)
            services.append(Service(id=service_id, spec=spec, created_at=now, updated_at=now, depends_on=depends))
        own_secrets = [s for s in stack.secrets if not s.external]
        new_secrets = [s for s in own_secrets if s.name not in secrets]
        for obj in own_secrets:
            found = secrets.get(obj.name)
            owned = found is not None and in_stack(found.labels, stack.name)
            if owned and found is not None and cluster is not None and self._opened(cluster, found) != obj.data:
                check_result(changed_object("secret", obj.name, stack.name))
        sealed: list[Secret] = []
        dek_wrapped = cluster.dek_wrapped if cluster is not None else ""
        if new_secrets and not dry_run:
            keyed = await self._keyed_cluster()
            dek_wrapped = keyed.dek_wrapped
            for obj in new_secrets:
                secret_id = new_id()
                value = obj.data or b""
                try:
                    seal = self._keyring.seal(keyed, secret_id, value)
                except SecretKeyError as exc:
                    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"the cluster's secret keys: {exc}") from None
                sealed.append(Secret(secret_id, obj.name, seal, len(value), dict(obj.labels), now, now))
        elif new_secrets:  # a plan seals nothing: a placeholder shows what would be created
            dek_wrapped = dek_wrapped or "plan"
            sealed = [Secret(new_id(), o.name, b"", len(o.data or b""), dict(o.labels), now, now) for o in new_secrets]
        return commands.ApplyStack(
            stack=stack.name,
            at=now,
            services=tuple(services),
            secrets=tuple(sealed),
            dek_wrapped=dek_wrapped,
            configs=tuple(
                Config(new_id(), c.name, c.data or b"", dict(c.labels), now, now)
                for c in stack.configs
                if not c.external
            ),
            volumes=tuple(
                Volume(new_id(), v.name, v.driver, dict(v.options), dict(v.labels))
                for v in stack.volumes
                if not v.external
            ),
            networks=tuple(
                Network(new_id(), n.name, n.subnet, n.internal, n.attachable, dict(n.labels))
                for n in stack.networks
                if not n.external
            ),
            external_secrets=tuple(s.name for s in stack.secrets if s.external),
            external_configs=tuple(c.name for c in stack.configs if c.external),
            external_networks=tuple(n.name for n in stack.networks if n.external),
            external_volumes=tuple(v.name for v in stack.volumes if v.external),
            prune=prune,
        )

    def _opened(self, cluster: ClusterInfo, secret: Secret) -> bytes | None:
        try:
            return self._keyring.open(cluster, secret.id, secret.sealed)
        except SecretKeyError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"the cluster's secret keys: {exc}") from None

    async def ListStacks(self, request: cpb.ListStacksRequest, context: object) -> cpb.ListStacksResponse:
        counts: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        with self._store.read() as state:
            for kind, labels in _labelled(state):
                name = labels.get(STACK_LABEL)
                if name:
                    counts[name][kind] += 1
        return cpb.ListStacksResponse(
            stacks=[
                cpb.StackSummary(
                    name=name,
                    services=c["service"],
                    secrets=c["secret"],
                    configs=c["config"],
                    networks=c["network"],
                    volumes=c["volume"],
                )
                for name, c in sorted(counts.items())
            ]
        )

    async def RemoveStack(self, request: cpb.RemoveStackRequest, context: object) -> cpb.RemoveStackResponse:
        try:
            check_name("stack", request.name)
        except ValidationError as exc:
            raise invalid(str(exc)) from None
        command = commands.RemoveStack(request.name, time.time())
        with self._store.read() as state:
            result, changes = commands.apply(state, command)
            check_result(result)
            removed = [_named(state, c) for c in changes if isinstance(c, Delete) and c.kind != "task"]
            deleted = {c.id for c in changes if isinstance(c, Delete)}
            kept = sorted(
                v.name for v in state.volumes.values() if in_stack(v.labels, request.name) and v.id not in deleted
            )
        await self._propose(command)
        return cpb.RemoveStackResponse(removed=[r for r in removed if r], kept=kept)


def _labelled(state: ClusterState) -> list[tuple[str, dict[str, str]]]:
    out = [("service", s.spec.labels) for s in state.services.values()]
    out += [("secret", s.labels) for s in state.secrets.values()]
    out += [("config", c.labels) for c in state.configs.values()]
    out += [("network", n.labels) for n in state.networks.values()]
    out += [("volume", v.labels) for v in state.volumes.values()]
    return out


def _named(state: ClusterState, change: Delete) -> str:
    found = {
        "service": state.services.get(change.id),
        "secret": state.secrets.get(change.id),
        "config": state.configs.get(change.id),
        "network": state.networks.get(change.id),
        "volume": state.volumes.get(change.id),
    }.get(change.kind)
    if isinstance(found, Service):
        return f"service {found.spec.name}"
    name = getattr(found, "name", None)
    return f"{change.kind} {shown(name) if name else change.id}" if found is not None else ""
