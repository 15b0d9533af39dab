#!/usr/bin/env bash
# `make deb`: build dist/warren_VERSION_ARCH.deb (ADR 64). Warren and its PyPI dependencies go
# into a venv under /opt/warren made by Debian's own python3 (the package depends on it), then
# dpkg-deb packs it with /usr/bin/warren, the systemd units and the maintainer scripts.
# Needs: Debian's python3 and python3-venv, dpkg-deb, PyPI (or pip's cache) for the dependencies,
# and the gRPC stubs generated in this checkout (`make proto`, which the Makefile runs first).
# DEB_OUT=DIR puts the .deb elsewhere, DEB_BUILD=DIR its scratch files; it prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3            # the interpreter the installed venv runs on
BUILD_PY=${PYTHON:-python3}    # builds the wheel (has setuptools >= 68, like `make install`)
PREFIX=/opt/warren
BUILD=${DEB_BUILD:-$REPO/build/deb}
STAGE=$BUILD/root
OUT=${DEB_OUT:-$REPO/dist}

for f in warren/api/v1/control_pb2.py warren/runtime/containerd/_gen/containerd; do
  [ -e "$f" ] || { echo "build-deb: $f is missing: run 'make proto' first" >&2; exit 1; }
done
[ -x "$PY" ] || { echo "build-deb: Debian's $PY is missing (apt-get install python3 python3-venv)" >&2; exit 1; }

VERSION=$($BUILD_PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
COMMIT=$($BUILD_PY warren/version.py commit "$REPO")
ARCH=$(dpkg --print-architecture)
PY_MINOR=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
NEXT_MINOR=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')

rm -rf "$BUILD"
mkdir -p "$BUILD/src" "$BUILD/wheels" "$STAGE" "$OUT"

# The wheel, built from a copy of what it ships: no build/ or egg-info left in the checkout, and
# nothing untracked from warren/ but the generated stubs (compiled files and caches stay out).
tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude=warren/BUILD_COMMIT pyproject.toml README.md warren \
  | tar -x -C "$BUILD/src"
$BUILD_PY -m pip wheel --quiet --no-deps --no-build-isolation -w "$BUILD/wheels" "$BUILD/src" >/dev/null

# The venv, made where it is staged, then moved to /opt/warren by rewriting the staged path.
# No pip inside (a dpkg-owned tree is not for pip installs): this pip installs into it.
$PY -m venv --without-pip "$STAGE$PREFIX"
$BUILD_PY -m pip --python "$STAGE$PREFIX/bin/python3" install -qq --disable-pip-version-check \
  --no-warn-script-location --no-compile "$BUILD"/wheels/warren-*.whl
SITE=$("$STAGE$PREFIX/bin/python3" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$COMMIT" >"$SITE/warren/BUILD_COMMIT"
{ grep -rlI --null "$STAGE$PREFIX" "$STAGE$PREFIX/bin" "$STAGE$PREFIX/pyvenv.cfg" || true; } \
  | xargs -0 -r sed -i "s|$STAGE$PREFIX|$PREFIX|g"
rm -f "$SITE"/warren-*.dist-info/direct_url.json  # it names the build's wheel file
find "$STAGE$PREFIX" -name __pycache__ -type d -prune -exec rm -rf {} +
# Compiled now, with the installed paths, so the files dpkg owns include them and nothing is
# written under /opt at run time (prerm removes any that appear anyway).
"$STAGE$PREFIX/bin/python3" -m compileall -q -j 0 -s "$STAGE" -p / "$STAGE$PREFIX/lib" >/dev/null

mkdir -p "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/usr/share/doc/warren"
ln -s "$PREFIX/bin/warren" "$STAGE/usr/bin/warren"
ln -s "$PREFIX/bin/wrn" "$STAGE/usr/bin/wrn"
install -m 0644 warren/systemd/*.service "$STAGE/lib/systemd/system/"
install -m 0644 README.md docs/cli.md "$STAGE/usr/share/doc/warren/"
# Shell completion, once `warren completion SHELL` exists (#16): each script it prints is packaged
# where that shell looks; a shell it does not know (or no such command) is skipped.
for target in bash:/usr/share/bash-completion/completions/warren zsh:/usr/share/zsh/vendor-completions/_warren \
  fish:/usr/share/fish/vendor_completions.d/warren.fish; do
  shell=${target%%:*}
  if "$STAGE$PREFIX/bin/python3" -m warren.cli.main completion "$shell" >"$BUILD/completion.$shell" 2>/dev/null \
    && [ -s "$BUILD/completion.$shell" ]; then
    install -D -m 0644 "$BUILD/completion.$shell" "$STAGE${target#*:}"
  fi
done

mkdir -p "$STAGE/DEBIAN"
INSTALLED_KB=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: warren
Version: $VERSION
Architecture: $ARCH
Maintainer: Warren developers <warren@localhost>
Section: admin
Priority: optional
Installed-Size: $INSTALLED_KB
Depends: python3 (>= $PY_MINOR), python3 (<< $NEXT_MINOR), containerd, runc, nftables, wireguard-go
Description: container orchestrator (managers, worker agents, overlay network)
 Warren runs services on a cluster: managers replicate the cluster state with Raft,
 worker agents run tasks through containerd or as plain processes, and a WireGuard
 overlay with nftables virtual IPs connects them. Built from commit $COMMIT.
 Python and its libraries live in a venv under $PREFIX.
EOF
cat >"$STAGE/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# The units are installed, never enabled: a manager unit's first start creates a cluster,
# which is for the operator to decide (`systemctl enable --now warren-manager`). An upgrade
# restarts the units that run (KillMode=process: their tasks keep running).
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  if [ -n "$2" ]; then
    systemctl try-restart warren-manager.service warren-worker.service >/dev/null 2>&1 || true
  fi
fi
exit 0
EOF
cat >"$STAGE/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# On removal, stops the services before their files go (KillMode=process: tasks keep running;
# `warren worker teardown` removes them); an upgrade restarts them in postinst instead. Byte code
# Python wrote at run time is removed too.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  for unit in warren-manager.service warren-worker.service; do
    systemctl stop "$unit" >/dev/null 2>&1 || true
  done
fi
find /opt/warren -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
exit 0
EOF
cat >"$STAGE/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# Purge leaves the data directories (/var/lib/warren, /var/lib/warren-worker): they hold a
# cluster's state and keys, which no package removal should destroy.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
exit 0
EOF
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"

DEB="$OUT/warren_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
