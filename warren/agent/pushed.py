"""Following a stream the leader pushes to this node's session (log subscriptions, ADR 14;
execs, ADR 59): the agent side of the dispatcher's `_pushed`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from warren.backoff import Backoff

log = logging.getLogger("warren.agent")

STEADY = 10.0  # a stream that lasted this long resets the reopening backoff


async def follow_pushed(
    open_call: Callable[[], Any],
    on_message: Callable[[Any], None],
    what: str,
    on_closed: Callable[[], None] = lambda: None,
) -> None:
    """Hand each message of `open_call()`'s stream to `on_message` until cancelled. A stream that
    fails is reopened with backoff (`on_closed` runs each time one ends), and a bug in a handler
    never ends the session; a manager that does not serve `what` is left alone."""
    backoff = Backoff(0.2, 5.0)
    while True:
        opened = time.monotonic()
        call = open_call()
        try:
            async for message in call:
                on_message(message)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("the manager does not serve %s: %s", what, exc.details())
                await asyncio.Event().wait()  # until the session ends
            log.debug("%s stream ended: %s %s", what, exc.code().name, exc.details())
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the session: log, reopen
            log.exception("%s stream failed", what)
        finally:
            call.cancel()
            on_closed()
        if time.monotonic() - opened > STEADY:
            backoff.reset()
        await asyncio.sleep(backoff.next())
