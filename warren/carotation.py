"""CA rotation progress (ADR 24), pure: which nodes still hold a certificate from the old root.

A rotation ends once every node's certificates come from the new root. Certificates are named
by the key id of the CA that issued them (its SubjectKeyIdentifier, which is the certificate's
AuthorityKeyIdentifier); the adapters compute those ids, so this module needs no cryptography.
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.model import Node, NodeRole
from warren.state import ClusterState


@dataclass(frozen=True, slots=True)
class Pending:
    node: Node
    reason: str


def agent_on(node: Node, ca_id: str) -> bool:
    """Whether the node's agent calls with a certificate from `ca_id`. A node whose agent was
    never seen (--manager-only) has nothing to re-issue there."""
    return node.agent_cert_ca in ("", ca_id)


def manager_on(node: Node, ca_id: str) -> bool:
    return node.role != NodeRole.MANAGER or node.manager_cert_ca == ca_id


def agents_done(state: ClusterState, ca_id: str) -> bool:
    """Every agent calls with a new certificate (and so trusts the new root): the managers may
    now serve certificates from the new root too."""
    return all(agent_on(n, ca_id) for n in state.nodes.values())


def pending(state: ClusterState, ca_id: str) -> list[Pending]:
    """The nodes that keep the rotation to `ca_id` from ending, and why, by hostname."""
    found = []
    for node in sorted(state.nodes.values(), key=lambda n: (n.hostname, n.id)):
        if not agent_on(node, ca_id):
            found.append(Pending(node, "its agent still uses a certificate from the old CA"))
        elif not manager_on(node, ca_id):
            found.append(Pending(node, "its manager still serves a certificate from the old CA"))
    return found
