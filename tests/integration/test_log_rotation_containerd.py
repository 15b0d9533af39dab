"""Task log rotation on the containerd runtime (ADR 62): the shim writes the task's log file
itself (a file:// URI, O_APPEND), and the agent's copy-truncate keeps it bounded all the same.
A worker joined with `--log-max-size 256K --log-max-files 3` runs a task that writes fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.chatty import CHATTY, check_rotation
from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.registry import LocalRegistry
from tests.integration.test_e2e_containerd import containerd_cluster

pytestmark = pytest.mark.integration


def test_a_chatty_container_log_is_rotated_and_stays_bounded(
    tmp_path: Path, containerd: ContainerdDaemon, registry: LocalRegistry
) -> None:
    rotation = ("--log-max-size", "256K", "--log-max-files", "3")
    with containerd_cluster(tmp_path, containerd, registry, agent_args=rotation) as c:
        c.ok("service", "create", "chatty", "--image", c.image, "--detach", "--", "sh", "-c", CHATTY)
        check_rotation(c.manager, c.worker.data_dir / "logs", "chatty", 256 * 1024, 3)
        c.ok("service", "rm", "chatty")
