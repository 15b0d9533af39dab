#!/usr/bin/env bash
# Debian packages Warren's runtime, demo and tests use: containerd + runc (the container
# runtime), tini (the init `--init` runs), busybox-static (the demo's and tests' image),
# docker-registry + skopeo (a registry on 127.0.0.1 for the pull tests), hey (HTTP load in
# the deployment tests and benchmark), prometheus (its promtool checks deploy/prometheus/rules.yml;
# the monitoring test and `make bench-scale` scrape a real cluster with it), python3-venv + systemd
# (`make deb`'s venv and its test's `systemd-analyze verify`, ADR 64), zsh + fish (the completion
# scripts' syntax checks), curl (the guide's examples).
# Installs only what is missing; the system containerd service is never used (the demo and
# the tests start their own daemons).
set -euo pipefail
PACKAGES="curl containerd runc tini busybox-static docker-registry skopeo wireguard-go wireguard-tools iperf3 nftables iproute2 iputils-ping hey prometheus python3-venv systemd zsh fish"
missing=""
for pkg in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq $missing >/dev/null
fi
