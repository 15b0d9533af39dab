"""Exit codes and the one error type every command raises. Documented in docs/cli.md."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Stable process exit codes: scripts may test them."""

    OK = 0
    FAILURE = 1  # generic failure, a wait that timed out, an internal error
    USAGE = 2  # bad flag, bad value, invalid request (INVALID_ARGUMENT)
    NOT_FOUND = 3  # NOT_FOUND
    CONFLICT = 4  # ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED (e.g. a stale version)
    UNAVAILABLE = 5  # no manager reachable: UNAVAILABLE, DEADLINE_EXCEEDED
    CREDENTIALS = 6  # no/unreadable credentials, TLS refused, UNAUTHENTICATED, PERMISSION_DENIED
    PAUSED = 7  # a rollout the wait followed paused (its failure action), and said why
    ROLLED_BACK = 8  # an update the wait followed was rolled back by its failure action


class CliError(Exception):
    """A failure to report as one line on stderr, then exit with `code`."""

    def __init__(self, message: str, code: Exit = Exit.FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
