"""Faults: a seeded, pure plan of rounds, and the few I/O primitives that inject and heal them.

`plan_rounds` decides everything random up front from the seed (kind, which follower or worker,
how long), so a failing round reproduces with the same seed. Targets that depend on the running
cluster (which manager leads) are resolved when the round starts, by role.

Partitions are nftables tables created inside the node namespaces (never the root one), named
`wch_<tag>`, dropping traffic to and from chosen peer addresses; netem is a root qdisc on the
node's eth0. Healing deletes exactly what was added.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# kind -> (needs followers (3 managers), description)
KINDS: dict[str, tuple[bool, str]] = {
    "kill_leader": (False, "SIGKILL the leader, restart it on its data dir"),
    "kill_follower": (True, "SIGKILL a follower, restart it on its data dir"),
    "kill_worker": (False, "SIGKILL a worker agent, restart it"),
    "stop_leader": (False, "SIGSTOP the leader, then SIGCONT"),
    "stop_follower": (True, "SIGSTOP a follower, then SIGCONT"),
    "stop_worker": (False, "SIGSTOP a worker agent, then SIGCONT"),
    "restart_leader": (False, "SIGTERM the leader, restart it on its data dir"),
    "isolate_leader": (True, "cut the leader off from every other namespace"),
    "partition_minority": (True, "cut one follower off from the other managers"),
    "partition_majority": (True, "split managers: leader plus one follower against the last follower and workers"),
    "isolate_worker": (False, "cut a worker off from every manager for long enough to be marked down"),
    "netem": (False, "packet loss and delay on a node's eth0"),
    "kill_leader_mid_update": (True, "SIGKILL the leader in the middle of a rolling update, restart it"),
    "kill_leader_mid_rollback": (True, "SIGKILL the leader in the middle of an automatic rollback, restart it"),
}
MID_ROLLOUT = ("kill_leader_mid_update", "kill_leader_mid_rollback")  # chaos/midupdate.py
# Kinds run only when `--faults` names them: drawing them from the seed would change the script
# of every seed, and the runs recorded in docs/benchmarks.md replay by seed.
OPT_IN = frozenset(MID_ROLLOUT)


@dataclass(frozen=True)
class Round:
    """One scripted round: inject `kind` after `pre` seconds of workload, hold it, heal."""

    index: int
    kind: str
    pick: int  # which follower / worker / node, as an index into the sorted candidates
    pre: float
    hold: float
    loss: int = 0  # netem: percent
    delay_ms: int = 0
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        text = f"{self.kind}#{self.pick} hold {self.hold:.1f}s"
        if self.kind == "netem":
            text += f" loss {self.loss}% delay {self.delay_ms}ms"
        if "order" in self.extra:
            text += f" {self.extra['order']} kill at {self.extra['at']} replaced"
        return text


def eligible(managers: int, allowed: list[str] | None = None) -> list[str]:
    kinds = [k for k, (needs_followers, _) in KINDS.items() if managers >= 3 or not needs_followers]
    if not allowed:
        return [k for k in kinds if k not in OPT_IN]
    unknown = sorted(set(allowed) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")
    kinds = [k for k in allowed if k in kinds]
    if not kinds:
        raise ValueError(f"none of {allowed} can run with {managers} manager(s)")
    return kinds


def plan_rounds(seed: int, rounds: int, managers: int, allowed: list[str] | None = None) -> list[Round]:
    """The scripted rounds of a run. With `allowed`, kinds cycle in the given order; otherwise
    they are drawn from the seed."""
    rng = random.Random(f"faults:{seed}")
    kinds = eligible(managers, allowed)
    plan = []
    for i in range(rounds):
        kind = kinds[i % len(kinds)] if allowed else rng.choice(kinds)
        hold = rng.uniform(8.0, 10.0) if kind == "isolate_worker" else rng.uniform(2.0, 5.0)
        plan.append(
            Round(
                index=i + 1,
                kind=kind,
                pick=rng.randrange(1000),
                pre=rng.uniform(0.5, 1.5),
                hold=round(hold, 2),
                loss=rng.choice([10, 20, 30]) if kind == "netem" else 0,
                delay_ms=rng.choice([20, 50, 100]) if kind == "netem" else 0,
                extra=_extra(kind, rng),
            )
        )
    return plan


def _extra(kind: str, rng: random.Random) -> dict:
    """Per-kind choices that only some kinds draw (drawn after the common ones, so that the
    other kinds' scripts stay as they were)."""
    if kind in MID_ROLLOUT:
        # the update's order, and how many of the service's 4 slots run the new version at the kill
        return {"order": rng.choice(["start-first", "stop-first"]), "at": rng.randint(1, 3)}
    return {}


def partition_rules(blocked: dict[str, set[str]]) -> dict[str, set[str]]:
    """Make a partition symmetric: host -> the peer IPs it may not talk to, given one side's view.
    `blocked` maps a host's IP to the IPs it is cut from."""
    out: dict[str, set[str]] = {ip: set(peers) for ip, peers in blocked.items()}
    for ip, peers in blocked.items():
        for peer in peers:
            out.setdefault(peer, set()).add(ip)
    return out


def nft_ruleset(table: str, peers: set[str]) -> str:
    """An nftables table that drops traffic to and from `peers` (in the namespace it is loaded in)."""
    addrs = ", ".join(sorted(peers))
    return (
        f"table inet {table} {{\n"
        f"  chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {addrs} }} drop; }}\n"
        f"  chain output {{ type filter hook output priority -10; policy accept; ip daddr {{ {addrs} }} drop; }}\n"
        f"}}\n"
    )


class Partition:
    """nftables tables added in some namespaces; `heal` deletes them (I/O through `lab.run_in`)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.applied: list = []  # hosts with the table loaded

    def apply(self, hosts_by_ip: dict, blocked: dict[str, set[str]]) -> None:
        import subprocess

        for ip, peers in sorted(partition_rules(blocked).items()):
            host = hosts_by_ip[ip]
            argv = host.nsenter(["nft", "-f", "-"])
            subprocess.run(argv, input=nft_ruleset(self.table, peers), text=True, check=True, capture_output=True)
            self.applied.append(host)

    def heal(self) -> None:
        from chaos.lab import run_in

        while self.applied:
            host = self.applied.pop()
            run_in(host, ["nft", "delete", "table", "inet", self.table], check=False)


def nft_loss_ruleset(table: str, loss: int) -> str:
    """Random loss on eth0 with nftables, for kernels without netem (CONFIG_NET_SCH_NETEM)."""
    rule = f'iifname != "lo" numgen random mod 100 < {loss} drop'
    out_rule = f'oifname != "lo" numgen random mod 100 < {loss} drop'
    return (
        f"table inet {table} {{\n"
        f"  chain input {{ type filter hook input priority -5; policy accept; {rule}; }}\n"
        f"  chain output {{ type filter hook output priority -5; policy accept; {out_rule}; }}\n"
        f"}}\n"
    )


class Netem:
    """netem delay and loss on one host's eth0; where the kernel has no netem, loss alone through
    an nftables table (`how` says which)."""

    def __init__(self, host, loss: int, delay_ms: int, table: str) -> None:
        self.host, self.loss, self.delay_ms, self.table = host, loss, delay_ms, table
        self.how = ""

    def apply(self) -> str:
        import subprocess

        from chaos.lab import run_in

        argv = ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{self.delay_ms}ms"]
        argv += ["loss", f"{self.loss}%"]
        if run_in(self.host, argv, check=False).returncode == 0:
            self.how = "netem"
        else:
            argv = self.host.nsenter(["nft", "-f", "-"])
            loaded = subprocess.run(argv, input=nft_loss_ruleset(self.table, self.loss), text=True, capture_output=True)
            self.how = "nft-loss" if loaded.returncode == 0 else ""
        return self.how

    def heal(self) -> None:
        from chaos.lab import run_in

        if self.how == "netem":
            run_in(self.host, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        elif self.how == "nft-loss":
            run_in(self.host, ["nft", "delete", "table", "inet", self.table], check=False)
        self.how = ""
