"""Run the chaos suite: `python3 -m chaos.run --seed S --rounds N [--out DIR]`.

A lab of namespaces, a real cluster in it, the seeded workload in the client namespace, then one
scripted fault per round (injected by chaos.inject); after each round the workload pauses, the
cluster must converge, and the checker reads the history against the state. One transcript line
per round; a JSON summary at the end (`DIR/summary.json`). Exit 1 if any check failed, 2 if the cluster could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from chaos import checker
from chaos.cluster import Cluster, NodeProc, _env
from chaos.faults import KINDS, MID_ROLLOUT, Round, plan_rounds
from chaos.inject import FaultInjection
from chaos.lab import Lab, cleanup_state, pid_alive
from chaos.midupdate import SERVICE as ROLLOUT_SERVICE
from chaos.midupdate import MidUpdate

STATE_DIR = Path("/tmp/warren-chaos/state")
CONVERGE_TIMEOUT = 30.0
# After a heal, every pair of managers must be connected again, and every manager caught up,
# within this long: PySyncObj redials every 0.2 s and a restarted manager starts in a few seconds.
LINKS_TIMEOUT = 15.0
PAUSE_TIMEOUT = 45.0


def cleanup_crashed(out=print) -> None:
    """Remove what a previous run left behind, when the run that recorded it is gone."""
    if not STATE_DIR.is_dir():
        return
    for state in sorted(STATE_DIR.glob("wch-*.json")):
        try:
            owner = json.loads(state.read_text()).get("pid", 0)
        except (OSError, ValueError):
            owner = 0
        if owner and owner != os.getpid() and pid_alive(owner):
            continue  # a run in progress
        removed = cleanup_state(state)
        out(f"cleaned up a previous run ({state.name}): {len(removed)} items")


class Workload:
    """The chaos.workload process in the client namespace, steered through its control file."""

    def __init__(self, lab: Lab, cluster: Cluster, root: Path, seed: int, run_id: str) -> None:
        self.history = root / "history.jsonl"
        self.control = root / "control.json"
        self.ack = root / "ack.json"
        self._set({"state": "pause", "round": 0})
        cmd = lab.hosts["client"].nsenter(
            [
                sys.executable,
                "-m",
                "chaos.workload",
                "--creds",
                str(cluster.creds),
                "--managers",
                ",".join(cluster.addrs),
                "--seed",
                str(seed),
                "--history",
                str(self.history),
                "--control",
                str(self.control),
                "--ack",
                str(self.ack),
                "--run-id",
                run_id,
            ]
        )
        self._log = (root / "workload.log").open("ab")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=_env(root / "none"))
        lab.record_process(self.process.pid, cmd)

    def _set(self, data: dict) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.control)

    def run(self, rnd: int) -> None:
        self._set({"state": "run", "round": rnd})

    def pause(self, rnd: int, timeout: float = PAUSE_TIMEOUT) -> bool:
        self._set({"state": "pause", "round": rnd})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if json.loads(self.ack.read_text()).get("paused") == rnd:
                    return True
            except (OSError, ValueError):
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the workload exited with {self.process.returncode}")
            time.sleep(0.05)
        return False

    def ops(self) -> list[dict]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        self._set({"state": "stop", "round": -1})
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Runner(FaultInjection):
    def __init__(self, args: argparse.Namespace, out=print) -> None:
        self.args = args
        self.out = out
        self.run_id = f"wch-{secrets.token_hex(3)}"
        self.root = Path(args.out or f"/tmp/warren-chaos/{self.run_id}").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lab = Lab(self.run_id, STATE_DIR / f"{self.run_id}.json")
        self.started = time.monotonic()
        self.failovers: dict[str, list[float]] = {}  # fault kind -> times to a new leader
        self.recoveries: list[float] = []
        self.convergence: list[float] = []
        self.relinked: list[float] = []  # heal -> every manager connected to every other, caught up
        self.faults: Counter = Counter()
        self.violations: list[dict] = []
        self._log_offsets: dict[str, int] = {}  # manager log -> bytes already checked
        self.rounds_done = 0
        self.cluster: Cluster | None = None
        self.workload: Workload | None = None
        self.mid_update: MidUpdate | None = None  # the mid-rollout kinds: their service and sampler

    def log(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {text}")

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        plan = plan_rounds(args.seed, args.rounds, args.managers, args.faults)
        self.log(
            f"run {self.run_id}: seed {args.seed}, {args.rounds} rounds, {args.managers} managers, "
            f"{args.workers} workers, out {self.root}"
        )
        names = [f"m{i + 1}" for i in range(args.managers)] + [f"w{i + 1}" for i in range(args.workers)] + ["client"]
        code = 0
        try:
            self.lab.create(names)
            self.cluster = Cluster(self.lab, self.root, args.managers, args.workers)
            try:
                self.cluster.bring_up()
            except Exception as exc:
                self.log(f"cluster bring-up failed: {exc}")
                code = 2  # the summary written in `finally` says so too
                return code
            self.log(
                f"cluster up: managers {', '.join(self.cluster.addrs)}; workers "
                f"{', '.join(w.host.ip for w in self.cluster.workers)}"
            )
            self.workload = Workload(self.lab, self.cluster, self.root, args.seed, self.run_id)
            for rnd in plan:
                self.round(rnd)
                self.rounds_done += 1
            code = 1 if self.violations else 0
        except KeyboardInterrupt:
            self.log("interrupted")
            code = 130
        except Exception as exc:
            self.log(f"run aborted: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            code = 1
            self.violations.append({"round": self.rounds_done + 1, "check": "runner", "problem": str(exc)})
        finally:
            self.teardown()
            self.write_summary(code)
        return code

    def teardown(self) -> None:
        if self.mid_update is not None:
            self.mid_update.close()
        if self.workload is not None:
            try:
                self.workload.stop()
            except Exception as exc:
                self.log(f"stopping the workload: {exc}")
        if self.cluster is not None:
            try:
                self.cluster.stop_all()
            except Exception as exc:
                self.log(f"stopping the cluster: {exc}")
        removed = cleanup_state(self.lab.state_file)
        self.log(f"teardown: removed {len(removed)} items (namespaces, leftover processes)")

    # -- one round -------------------------------------------------------------------------------
    def round(self, rnd: Round) -> None:
        cluster, workload = self.cluster, self.workload
        assert cluster is not None and workload is not None
        self.faults[rnd.kind] += 1
        notes: list[str] = []
        problems: list[tuple[str, str]] = []
        workload.run(rnd.index)
        time.sleep(rnd.pre)
        heal: list = []
        worker_check: tuple[NodeProc, dict[str, bool]] | None = None
        try:
            target, heal, worker_check = self.inject(rnd, notes, problems)
        finally:
            for undo in reversed(heal):
                undo()
        t_heal = time.monotonic()
        for node in cluster.nodes:  # a process that died by itself is a finding, then restarted
            if not node.alive:
                problems.append(("crash", f"{node.name} exited with {node.process.returncode}: {node.log_tail(3)}"))
                node.start()
        if not workload.pause(rnd.index):
            problems.append(("workload", f"did not pause within {PAUSE_TIMEOUT:.0f}s"))
        state, waited, reasons = self.converge(t_heal, worker_check)
        if reasons:
            problems.append(
                ("convergence", f"not converged {CONVERGE_TIMEOUT:.0f}s after heal: {'; '.join(reasons[:4])}")
            )
        else:
            self.convergence.append(waited)
        relinked, unlinked = self.links(t_heal)
        if unlinked:
            problems.append(("links", f"{LINKS_TIMEOUT:.0f}s after heal: {'; '.join(unlinked[:4])}"))
        else:
            self.relinked.append(relinked)
        if rnd.kind in MID_ROLLOUT and self.mid_update is not None:
            problems += self.mid_update.finish(t_heal + CONVERGE_TIMEOUT, notes)
        ops = workload.ops()
        if state is not None:
            written = [s for s in state["services"] if s["name"] != ROLLOUT_SERVICE]  # not the workload's
            problems += [("writes", p) for p in checker.check_writes(ops, written)]
            problems += [("slots", p) for p in checker.check_slots(state["tasks"])]
            if worker_check is not None:
                node = worker_check[0]
                alive = [tid for tid, ok in node.task_processes().items() if ok]
                problems += [("reconcile", p) for p in checker.check_reconciled(node.node_id(), alive, state["tasks"])]
        else:
            problems.append(("state", "could not read the cluster state"))
        problems += [("raft", p) for p in self.new_raft_tick_failures()]
        for check, problem in problems:
            self.violations.append({"round": rnd.index, "kind": rnd.kind, "check": check, "problem": problem})
        outcomes = Counter(o["outcome"] for o in ops)
        verdict = "ok" if not problems else f"FAIL {len(problems)}: " + " | ".join(f"{c}: {p}" for c, p in problems[:3])
        conv = f"converged {waited:.1f}s" if not reasons else "NOT converged"
        conv += f", links {relinked:.1f}s" if not unlinked else ", links BROKEN"
        self.log(
            f"round {rnd.index}/{self.args.rounds} {rnd.describe()} on {target} | "
            f"ops {len(ops)} (ok {outcomes['ok']}, failed {outcomes['failed']}, unknown {outcomes['unknown']}) | "
            f"{' '.join(notes)}{' | ' if notes else ''}{conv} | {verdict}"
        )

    def new_raft_tick_failures(self) -> list[str]:
        """Raft tick failures that the managers logged since the last round."""
        assert self.cluster is not None
        problems = []
        for manager in self.cluster.managers:
            path = manager.log_path
            try:
                with path.open("rb") as log:
                    log.seek(self._log_offsets.get(str(path), 0))
                    text = log.read()
            except OSError:
                continue
            self._log_offsets[str(path)] = self._log_offsets.get(str(path), 0) + len(text)
            problems += checker.check_raft_ticks(manager.name, text.decode(errors="replace"))
        return problems

    def converge(self, t_heal: float, worker_check) -> tuple[dict | None, float, list[str]]:
        """Poll the leader's state until it has converged (and a cut-off worker reconciled)."""
        cluster = self.cluster
        assert cluster is not None and cluster.probe is not None
        deadline = t_heal + CONVERGE_TIMEOUT
        state, reasons = None, ["no leader"]
        while True:
            leader = cluster.leader(timeout=max(0.5, deadline - time.monotonic()))
            if leader is not None:
                cluster.probe.call(op="info", addr=leader.api_addr, consistent=True, timeout=2.0)
                reply = cluster.probe.call(op="state", addr=leader.api_addr)
                if reply["ok"]:
                    state, reasons = reply, checker.convergence(reply)
                    if not reasons and worker_check is not None:
                        node = worker_check[0]
                        alive = [tid for tid, ok in node.task_processes().items() if ok]
                        reasons = checker.check_reconciled(node.node_id(), alive, reply["tasks"])
            if not reasons or time.monotonic() > deadline:
                return state, time.monotonic() - t_heal, reasons
            time.sleep(0.2)

    def links(self, t_heal: float) -> tuple[float, list[str]]:
        """Poll the leader's view of every manager until each pair is connected (both ends say
        so) and each has applied what the leader had applied at the first look."""
        cluster = self.cluster
        assert cluster is not None and cluster.probe is not None
        names = {m.api_addr: m.name for m in cluster.managers}
        deadline = t_heal + LINKS_TIMEOUT
        applied: int | None = None
        problems = ["no leader"]
        while True:
            leader = cluster.leader(timeout=max(0.5, deadline - time.monotonic()))
            if leader is not None:
                reply = cluster.probe.call(op="info", addr=leader.api_addr, timeout=3.0)
                if reply["ok"] and reply["raft_state"] == "leader":
                    applied = reply["applied_index"] if applied is None else applied
                    views = [{**m, "name": names.get(m["api_addr"], m["api_addr"])} for m in reply["managers"]]
                    problems = checker.check_links(views, applied)
                elif reply["ok"]:
                    problems = [f"{leader.name} is no longer the leader"]
                else:
                    problems = [f"{leader.name}: {reply['detail']}"]
            if not problems or time.monotonic() > deadline:
                return time.monotonic() - t_heal, problems
            time.sleep(0.2)

    # -- summary ---------------------------------------------------------------------------------
    def write_summary(self, code: int) -> None:
        ops = self.workload.ops() if self.workload is not None else []
        lost = [v for v in self.violations if v["check"] == "writes"]
        summary = {
            "run_id": self.run_id,
            "seed": self.args.seed,
            "rounds": self.rounds_done,
            "rounds_planned": self.args.rounds,
            "managers": self.args.managers,
            "workers": self.args.workers,
            "faults": dict(sorted(self.faults.items())),
            "operations": dict(sorted(Counter(o["outcome"] for o in ops).items())),
            "operations_by_kind": dict(sorted(Counter(f"{o['op']}:{o['outcome']}" for o in ops).items())),
            "lost_writes": len(lost),
            "violations": self.violations,
            "failover_s": checker.summary_stats(self.failovers.get("kill_leader", [])),
            "failover_by_fault_s": {k: checker.summary_stats(v) for k, v in sorted(self.failovers.items())},
            "restart_recovery_s": checker.summary_stats(self.recoveries),
            "convergence_s": checker.summary_stats(self.convergence),
            "links_s": checker.summary_stats(self.relinked),
            "duration_s": round(time.monotonic() - self.started, 1),
            "exit_code": code,
        }
        path = self.root / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        self.log(f"summary: {json.dumps({k: summary[k] for k in ('rounds', 'faults', 'operations', 'lost_writes')})}")
        for kind, fo in summary["failover_by_fault_s"].items():
            self.log(
                f"failover after {fo['n']} x {kind}: p50 {fo['p50']:.2f}s p99 {fo['p99']:.2f}s max {fo['max']:.2f}s"
            )
        cv = summary["convergence_s"]
        if cv["n"]:
            self.log(f"convergence after heal: p50 {cv['p50']:.2f}s p99 {cv['p99']:.2f}s max {cv['max']:.2f}s")
        lk = summary["links_s"]
        if lk["n"]:
            self.log(
                f"managers linked and caught up after heal: p50 {lk['p50']:.2f}s p99 {lk['p99']:.2f}s "
                f"max {lk['max']:.2f}s"
            )
        self.log(f"{len(self.violations)} violations; summary in {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m chaos.run", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="directory for logs, history and summary (default /tmp/warren-chaos/RUN)")
    p.add_argument("--managers", type=int, default=int(os.environ.get("CHAOS_MANAGERS", "3")))
    p.add_argument("--workers", type=int, default=3)
    p.add_argument(
        "--faults",
        type=lambda s: [k for k in s.split(",") if k],
        help=f"fault kinds to cycle through, comma-separated (default: drawn from the seed): {', '.join(KINDS)}",
    )
    p.add_argument("--cleanup", action="store_true", help="only clean up what crashed runs left behind")
    return p.parse_args(argv)


_MAIN_PID = os.getpid()


def _interrupt(_sig, _frame) -> None:
    # pyroute2 forks helpers that inherit this handler and get SIGTERM: only the runner unwinds.
    if os.getpid() != _MAIN_PID:
        os._exit(0)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("chaos: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # so that teardown runs
    cleanup_crashed()
    if args.cleanup:
        return 0
    return Runner(args, out=lambda line: print(line, flush=True)).run()


if __name__ == "__main__":
    sys.exit(main())
