"""The overlay network (issue #5, ADRs 6 and 17).

- `plan`: pure mesh planning and diffing (nodes -> desired WireGuard interface and routes);
- `ipam`: pure address management (node subnets, task addresses, service VIPs);
- `wireguard`: the WireGuard device adapter (kernel through pyroute2, or wireguard-go over UAPI);
- `links`: pyroute2 helpers for links, addresses, routes, veths and bridges, in any namespace;
- `mesh`: reads a device's state, diffs it against a plan, applies the difference;
- `fake`: an in-memory device and routing port for tests of code that converges a mesh;
- `lean`: lets the agent load pyroute2's submodules without its everything-importing package.

Nothing is imported here, so importing the pure modules pulls in no I/O library.
"""
