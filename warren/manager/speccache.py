"""Each service's spec as protobuf, converted once per spec (ADR 51).

A list of services converted every spec on every call: at 300 services that conversion was most
of ListServices' time. Specs are immutable, so a converted spec stays right for as long as the
service holds the same spec object; the cache keeps that object to compare by identity.
"""

from __future__ import annotations

from collections.abc import Collection

from warren.api import convert
from warren.api.v1 import types_pb2 as pb
from warren.model import Service, ServiceSpec


class SpecCache:
    def __init__(self) -> None:
        self._specs: dict[str, tuple[ServiceSpec, pb.ServiceSpec]] = {}

    def spec_pb(self, service: Service) -> pb.ServiceSpec:
        """`service`'s spec as protobuf; shared, so copy it rather than change it."""
        hit = self._specs.get(service.id)
        if hit is None or hit[0] is not service.spec:
            hit = self._specs[service.id] = (service.spec, convert.spec_to_pb(service.spec))
        return hit[1]

    def keep_only(self, service_ids: Collection[str]) -> None:
        """Forget the services no longer in `service_ids` (removed ones)."""
        if len(self._specs) > len(service_ids):
            self._specs = {k: v for k, v in self._specs.items() if k in service_ids}
