#!/usr/bin/env bash
# Warren's main job on one machine: start a one-manager cluster in the background and run a
# service on it. `cmd/demo.sh stop` (or `make demo-stop`) stops the manager by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${WARREN_DEMO_DIR:-$PWD/.demo}
API=${WARREN_DEMO_API:-127.0.0.1:4242}
METRICS=${WARREN_DEMO_METRICS:-127.0.0.1:9323}
PIDFILE=$DEMO_DIR/manager.pid
warren() { python3 -m warren.cli.main "$@"; }

stop() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")"
    echo "stopped the demo manager (pid $(cat "$PIDFILE")); its state stays in $DEMO_DIR/data"
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-}" = "stop" ]; then stop; exit 0; fi

mkdir -p "$DEMO_DIR"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "a demo manager is already running (pid $(cat "$PIDFILE")); reusing it"
else
  python3 -m warren.cli.main cluster init --data-dir "$DEMO_DIR/data" --listen-addr "$API" \
    --metrics-addr "$METRICS" >"$DEMO_DIR/manager.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 100); do
    if warren cluster info >/dev/null 2>&1; then break; fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "the manager exited; its log:" >&2; cat "$DEMO_DIR/manager.log" >&2; rm -f "$PIDFILE"; exit 1
    fi
    sleep 0.1
  done
  sed -n '1,/^Manager /p' "$DEMO_DIR/manager.log"
fi

echo; echo "+ warren node ls"; warren node ls
if ! warren service inspect web >/dev/null 2>&1; then
  echo; echo "+ warren service create web --image busybox:latest --replicas 3 -- httpd -f -p 8080"
  warren service create web --image busybox:latest --replicas 3 -- httpd -f -p 8080
fi
echo; echo "+ warren service ls"; warren service ls
echo; echo "+ warren service ps web"; warren service ps web
echo; echo "+ curl -s http://$METRICS/metrics | grep ^warren_tasks"
python3 - "$METRICS" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
print("\n".join(line for line in body.splitlines() if line.startswith("warren_tasks") and not line.endswith(" 0.0")))
PY
cat <<MSG

The manager keeps running in the background (pid $(cat "$PIDFILE"), log $DEMO_DIR/manager.log).
Try: warren service scale web=5 · warren service ps web · warren node ls · warren service rm web
Stop it with: make demo-stop
Note: tasks stop at "assigned" until the worker agent (issue #3) runs them on the node.
MSG
