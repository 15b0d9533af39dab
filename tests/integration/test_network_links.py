"""The pyroute2 helpers in a namespace of their own: veth into another namespace, bridge,
addresses and routes added twice and removed twice (idempotent both ways)."""

from __future__ import annotations

import os
import uuid

import pytest

from warren.network import links

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]


def test_links_addresses_routes_in_namespaces() -> None:
    prefix = f"wnl{uuid.uuid4().hex[:6]}"
    a, b = f"{prefix}-a", f"{prefix}-b"
    try:
        links.create_netns(a)
        links.create_netns(b)
        links.add_bridge("br0", a)
        links.add_veth("va", "vb", netns=a, peer_netns=b)
        links.set_master("va", "br0", a)
        assert links.link_index("vb", b) is not None and links.link_index("vb", a) is None

        links.add_address("br0", "10.77.0.1/24", a)
        links.add_address("br0", "10.77.0.1/24", a)  # already there: fine
        links.add_address("vb", "10.77.0.2/24", b)
        links.link_up("vb", b, mtu=1400)
        assert links.addresses("br0", a) == ("10.77.0.1/24",)

        links.add_address("vb", "10.88.0.2/32", b)
        links.add_route("10.99.0.0/24", "vb", "10.88.0.2", b)
        links.add_route("10.99.0.0/24", "vb", "10.88.0.2", b)  # replace: still one
        assert links.routes("vb", b) == (("10.99.0.0/24", "10.88.0.2"),)  # the connected /24 is the kernel's
        links.remove_route("10.99.0.0/24", "vb", b)
        links.remove_route("10.99.0.0/24", "vb", b)  # already gone: fine
        links.remove_address("vb", "10.88.0.2/32", b)
        links.remove_address("vb", "10.88.0.2/32", b)
        assert links.routes("vb", b) == ()
        assert links.addresses("vb", b) == ("10.77.0.2/24",)

        with pytest.raises(links.LinkError, match=f"no link nope in namespace {b}"):
            links.link_up("nope", b)
        links.delete_link("va", a)
        links.delete_link("va", a)
        assert links.link_index("vb", b) is None  # a veth goes with its peer
    finally:
        links.remove_netns(a)
        links.remove_netns(b)
