"""The values of the secrets and configs a spec names, as the dispatcher sends them (ADR 38).

Only the leader's dispatcher calls this, for a spec it is about to send to the agent of a task
that runs it: that is the one place a secret is decrypted. A value that cannot be opened is
left out (and logged, without the value); the agent then says which one it lacks.
"""

from __future__ import annotations

import logging

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.secretkeys import KeyRing, SecretKeyError
from warren.model import ServiceSpec
from warren.state import ClusterState

log = logging.getLogger(__name__)


class TaskFileSource:
    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def files(self, state: ClusterState, spec: ServiceSpec) -> list[dpb.TaskFile]:
        out: list[dpb.TaskFile] = []
        for name in dict.fromkeys(r.source for r in spec.secrets):
            secret = state.secret_by_name(name)
            if secret is None or state.cluster is None:
                log.warning("service %s names secret %s, which does not exist", spec.name, name)
                continue
            try:
                data = self._keyring.open(state.cluster, secret.id, secret.sealed)
            except SecretKeyError as exc:
                log.error("secret %s of service %s cannot be opened: %s", name, spec.name, exc)
                continue
            out.append(dpb.TaskFile(kind="secret", name=name, data=data))
        for name in dict.fromkeys(r.source for r in spec.configs):
            config = state.config_by_name(name)
            if config is None:
                log.warning("service %s names config %s, which does not exist", spec.name, name)
                continue
            out.append(dpb.TaskFile(kind="config", name=name, data=config.data))
        return out
