"""A leader killed in the middle of a rolling update (issue #12): the `kill_leader_mid_update` and
`kill_leader_mid_rollback` rounds.

ADR 33 makes the rollout a function of the replicated state, so a new leader must continue it
where the old one stopped. The round: a replicated service of `REPLICAS` exec tasks, settled;
an update (parallelism 1, a short monitor; start-first or stop-first, as the plan drew) sent to
the leader; once some slots run the new version and some still the old one, the runner SIGKILLs
the leader (restarted on its data dir at heal, as `kill_leader`). `kill_leader_mid_rollback`
sends an update with the failure action `rollback` whose first `RUN_FIRST` tasks run and every
later one exits at once: that failure rolls the service back (a new version with the old spec).
The slots the update never reached are adopted into it at once (ADR 33: they run its spec); the
two that ran the failed version (and the failed one's, stop-first) are replaced again, and the
leader dies once 1-3 slots run the rollback's version.

Throughout the round a sampler, with its own probe, reads the service and its tasks from every
live manager in turn and checks each snapshot: no slot holds two running tasks of the same
version, nor two at all in a stop-first update; no slot is left without a running task in a
start-first update, nor more than `parallelism` slots at once in a stop-first one. After heal:
the status reaches `completed` for the version sent (`rollback_completed` for its rollback), and
every running task runs that version; the status is still that of the rollout begun before the
kill (same start, same versions); the new version's tasks that ran before the kill still run
(the new leader does not redo what was done).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from chaos import checker
from chaos.cluster import Cluster, NodeProc, Probe
from chaos.faults import Round
from chaos.lab import Lab

SERVICE = "wch-rollout"
REPLICAS = 4
MONITOR = 1.5  # seconds a new task must stay ready: four slots one at a time take several seconds
COMMAND = ["/bin/sleep", "3600"]
RUN_FIRST = 2  # of the rolled-back update's tasks, the first two run: the rollback replaces them
SETTLE_TIMEOUT = 30.0
MIDDLE_TIMEOUT = 20.0
SAMPLE_PERIOD = 0.1


def in_the_middle(reply: dict | None, version: int, replaced: int = 1, state: str = "updating") -> bool:
    """The rollout of `version` is under way (`state`: updating, or rollback_started): at least
    `replaced` slots run it, and some still an older version."""
    if reply is None:
        return False
    svc, tasks = reply["service"], reply["tasks"]
    status = svc["update_status"]
    if svc["version"] != version or status is None or status["to_version"] != version:
        return False
    versions = [t["spec_version"] for t in tasks if checker.running(t)]
    new = versions.count(version)
    return status["state"] == state and new >= replaced and new < len(versions)


class Sampler:
    """Reads the service from every live manager in turn (its own probe, its own thread) and
    keeps each distinct slot violation with where and when it was seen."""

    def __init__(self, probe: Probe, managers: list[NodeProc]) -> None:
        self.probe, self.managers = probe, managers
        self.samples = 0
        self.problems: list[str] = []
        self.latest: dict | None = None
        self.completed: dict[int, float] = {}  # version -> when a manager first said completed
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rollout-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for manager in self.managers:
                    if self._stop.is_set():
                        break
                    if manager.alive and not manager.stopped:
                        reply = self.probe.call(op="rollout", addr=manager.api_addr, service=SERVICE, timeout=1.0)
                        if reply["ok"]:
                            self._check(manager.name, reply)
                self._stop.wait(SAMPLE_PERIOD)
        except Exception as exc:  # the probe died: say so rather than pass with no samples
            with self._lock:
                self.problems.append(f"the sampler stopped: {type(exc).__name__}: {exc}")

    def _check(self, name: str, reply: dict) -> None:
        svc = reply["service"]
        stop_first = [svc["id"]] if svc["order"] == "stop-first" else []
        found = checker.check_slots(reply["tasks"], stop_first) + checker.check_serving(svc, reply["tasks"])
        with self._lock:
            self.samples += 1
            self.latest = reply
            status = svc["update_status"]
            if status is not None and status["state"] in ("completed", "rollback_completed"):
                self.completed.setdefault(status["to_version"], time.monotonic())
            for problem in found:
                if problem not in self._seen:
                    self._seen.add(problem)
                    self.problems.append(f"{name} at +{time.monotonic() - self._t0:.1f}s: {problem}")

    def last(self) -> dict | None:
        with self._lock:
            return self.latest

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class MidUpdate:
    """The service this kind of round updates (created on its first round, kept after it)."""

    def __init__(self, lab: Lab, cluster: Cluster, root: Path, run_id: str) -> None:
        self.lab, self.cluster, self.root, self.run_id = lab, cluster, root, run_id
        self.probe: Probe | None = None
        self.sampler: Sampler | None = None
        self.created = False
        self.version = 0  # the version being rolled out (a rollback's, after a failed update)
        self.done = "completed"  # the state its status must reach
        self.before: dict | None = None  # the update status when the leader was killed
        self.new_before: set[str] = set()  # tasks of the new version running then
        self.t_update = 0.0

    def _spec(self, gen: int, order: str, failing: bool = False) -> dict:
        return {
            "name": SERVICE,
            "replicas": REPLICAS,
            "env": {"WCH_RUN": self.run_id, "GEN": str(gen)},
            "command": self._failing(gen) if failing else COMMAND,
            "parallelism": 1,
            "monitor": MONITOR,
            "order": order,
            "failure_action": "rollback" if failing else "pause",
        }

    def _failing(self, gen: int) -> list[str]:
        """The command of an update to roll back: the first `RUN_FIRST` tasks to start run (they
        count themselves in a directory of the run: the lab's hosts share the file system), every
        later one exits at once. Parallelism 1 starts them one at a time."""
        tally = self.root / f"rollback-{gen}"
        script = f'mkdir -p {tally}; n=$(ls {tally} | wc -l); touch {tally}/$$; [ "$n" -lt {RUN_FIRST} ] || exit 3'
        return ["/bin/sh", "-c", f"{script}; exec sleep 3600"]

    def _read(self, manager: NodeProc) -> dict:
        assert self.cluster.probe is not None
        return self.cluster.probe.call(op="rollout", addr=manager.api_addr, service=SERVICE, timeout=2.0)

    def _poll(self, done: Callable[[dict], list[str]], deadline: float) -> tuple[dict | None, list[str]]:
        """Read the service from the leader until `done` finds nothing left (or the deadline)."""
        reply, reasons = None, ["no leader"]
        while True:
            leader = self.cluster.leader(timeout=max(0.5, deadline - time.monotonic()))
            if leader is not None:
                got = self._read(leader)
                if got["ok"]:
                    reply, reasons = got, done(got)
                else:
                    reasons = [f"{leader.name}: {got['detail']}"]
            if not reasons or time.monotonic() > deadline:
                return reply, reasons
            time.sleep(0.2)

    def start(self, rnd: Round, leader: NodeProc, notes: list[str], problems: list) -> None:
        """Settle the service, send the update through `leader` and wait until it (or, for
        `kill_leader_mid_rollback`, its rollback) is half done."""
        assert self.cluster.probe is not None
        order = rnd.extra.get("order", "start-first")
        rollback = rnd.kind == "kill_leader_mid_rollback"
        self.before, self.new_before = None, set()
        if not self.created:
            reply = self.cluster.probe.call(
                op="put_service", addr=leader.api_addr, spec=self._spec(0, order), create=True
            )
            if not reply["ok"] and reply["code"] != "ALREADY_EXISTS":
                problems.append(("rollout", f"could not create {SERVICE}: {reply['detail']}"))
                return
            self.created = True
        _, reasons = self._poll(
            lambda r: checker.rollout_unfinished(r["service"], r["tasks"], ("completed", "rollback_completed")),
            time.monotonic() + SETTLE_TIMEOUT,
        )
        if reasons:
            problems.append(("rollout", f"{SERVICE} did not settle before the update: {'; '.join(reasons[:3])}"))
            return
        if self.probe is None:
            self.probe = Probe(self.lab, self.lab.hosts["client"], self.cluster.creds, self.root, "rollout-probe.log")
        self.sampler = Sampler(self.probe, self.cluster.managers)
        leader = self.cluster.leader(timeout=5.0) or leader
        t0 = time.monotonic()
        spec = self._spec(rnd.index, order, failing=rollback)
        reply = self.cluster.probe.call(op="put_service", addr=leader.api_addr, spec=spec)
        if not reply["ok"]:
            problems.append(("rollout", f"the update was refused: {reply['code']} {reply['detail']}"))
            return
        # A rollback commits the old spec as the next version (ADR 33: versions only go up).
        self.version = reply["version"] + (1 if rollback else 0)
        self.done = "rollback_completed" if rollback else "completed"
        self.t_update = t0
        replaced, state = rnd.extra.get("at", 1), "rollback_started" if rollback else "updating"
        deadline = t0 + MIDDLE_TIMEOUT
        while not in_the_middle(self.sampler.last(), self.version, replaced, state) and time.monotonic() < deadline:
            time.sleep(0.05)
        middle = self.sampler.last()
        if not in_the_middle(middle, self.version, replaced, state):
            what = "rollback" if rollback else "update"
            problems.append(("rollout", f"the {what} to version {self.version} never had {replaced} slots replaced"))
            return
        assert middle is not None
        self.before = middle["service"]["update_status"]
        self.new_before = {t["id"] for t in middle["tasks"] if checker.running(t) and t["spec_version"] == self.version}
        notes.append(
            f"{order} {'rollback to ' if rollback else ''}v{self.version} "
            f"{len(self.new_before)}/{REPLICAS} replaced at the kill "
            f"({time.monotonic() - t0:.1f}s in)"
        )

    def finish(self, deadline: float, notes: list[str]) -> list[tuple[str, str]]:
        """After heal: the rollout completes, and was the same rollout throughout."""
        sampler, self.sampler = self.sampler, None
        if sampler is None:
            return []  # start() already said why
        if self.before is None:  # start() said why; what was sampled still counts
            sampler.stop()
            return [("slots", p) for p in sampler.problems]
        reply, reasons = self._poll(
            lambda r: checker.rollout_unfinished(r["service"], r["tasks"], (self.done,)), deadline
        )
        sampler.stop()
        problems = [("slots", p) for p in sampler.problems]
        notes.append(f"{sampler.samples} samples")
        if reasons or reply is None:
            problems.append(("rollout", f"version {self.version} not {self.done} after heal: {'; '.join(reasons[:3])}"))
            return problems
        done = sampler.completed.get(self.version, time.monotonic())
        notes.append(f"{self.done.replace('_', ' ')} in {done - self.t_update:.1f}s")
        after = reply["service"]["update_status"]
        problems += [("rollout", p) for p in checker.check_rollout_continued(self.before, after)]
        problems += [("rollout", p) for p in checker.check_rollout_kept(self.new_before, reply["tasks"])]
        return problems

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.sampler = None
        if self.probe is not None:
            self.probe.close()
            self.probe = None
