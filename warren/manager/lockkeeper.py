"""Each manager's own side of autolock (ADR 44): hold the KEK as early as it can, and keep its
Raft secret and TLS key (and its embedded agent's key) sealed on disk exactly while the cluster
is locked.

The KEK opens with the Raft secret only until the cluster locks. So every manager opens it the
moment the first key pair commits (`observe`, on the apply thread, in log order): enabling
autolock commits the pair in an entry of its own before the lock, and no follower is left
without the KEK. Sealing and unsealing the files is file I/O, done on the event loop's side
(`run`) after each committed change to the cluster, and once at start (a crash between a lock
committing and the files being sealed is finished then).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from warren.manager import autolock, lockedfiles
from warren.manager.ports import StateReader
from warren.manager.secretkeys import KeyRing
from warren.model import ClusterInfo
from warren.state import Change, Put

log = logging.getLogger(__name__)


class LockKeeper:
    def __init__(self, data: Path, store: StateReader, keyring: KeyRing) -> None:
        self._data = data
        self._store = store
        self._keyring = keyring
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._changed.set()  # look once at start
        self._agent_released = False  # demoted: the embedded agent's key stays plain (release_agent_key)

    def observe(self, index: int, changes: list[Change] | None) -> None:
        """A store watcher (apply thread): each committed version of the cluster, in order."""
        if changes is None:  # a snapshot installed: it may hold a pair the Raft secret still opens
            with self._store.read() as state:
                if state.cluster is not None:
                    self.hold_kek_if_possible(state.cluster)
        for change in changes or ():
            if isinstance(change, Put) and isinstance(change.obj, ClusterInfo):
                self.hold_kek_if_possible(change.obj)
        if changes is None or any(change.kind == "cluster" for change in changes):
            self._loop.call_soon_threadsafe(self._changed.set)

    def hold_kek_if_possible(self, cluster: ClusterInfo) -> None:
        """Open the KEK while the Raft secret still opens it (a cheap AES open; a no-op once
        held; fails quietly on a locked cluster: this manager is then locked)."""
        if cluster.kek_wrapped:
            self._keyring.holds_kek(cluster)

    def step(self) -> str:
        """Bring the files in line with the state (blocking); what was done, for the log."""
        with self._store.read() as state:
            cluster = state.cluster
        if cluster is None or not self._keyring.holds_kek(cluster):
            return ""  # a locked manager: nothing to seal with (it runs until `cluster unlock`)
        kek = self._keyring.kek(cluster)
        if autolock.is_locked(cluster):
            sealed = lockedfiles.seal(self._data, kek, agent_key=not self._agent_released)
            return "sealed this manager's Raft secret and TLS keys" if sealed else ""
        if lockedfiles.any_sealed(self._data):
            lockedfiles.unseal(self._data, kek)
            return "autolock is off: this manager's Raft secret and TLS keys are plain again"
        return ""

    def release_agent_key(self) -> None:
        """This manager was demoted and stops: write its embedded agent's key plain, since the
        agent will run without this manager and its KEK. A step still running in its thread
        leaves the key alone from now on. Blocking."""
        with self._store.read() as state:
            cluster = state.cluster
        if cluster is None or not self._keyring.holds_kek(cluster):
            return  # nothing sealed by this manager (its files are plain until it holds the KEK)
        with lockedfiles.FILES_LOCK:
            self._agent_released = True
            lockedfiles.unseal_agent_key(self._data, self._keyring.kek(cluster))

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                done = await asyncio.to_thread(self.step)
            except Exception:  # a full disk, say: retried at the next change
                log.exception("cannot seal or unseal this manager's files")
                continue
            if done:
                log.info("%s", done)
