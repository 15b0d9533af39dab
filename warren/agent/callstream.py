"""Requests a manager answers one at a time, on one bidirectional stream per session (ADR 79).

grpc's asyncio server takes in one new call at a time, each costing turns of its event loop, and
a busy leader's turns are long: a message on an open stream costs it far less than a new call.
A manager without the stream's method (UNIMPLEMENTED: an older version during an upgrade) gets
one unary call per request instead, for the rest of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

import grpc

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class StreamEnded(Exception):
    """The manager ended the stream without a status (it closed the session)."""


class CallStream(Generic[Request, Answer]):
    """One session's requests of one kind, each answered in turn on `open_stream()`'s stream,
    or by `call(request, timeout=...)` on a manager without it."""

    def __init__(
        self,
        name: str,
        open_stream: Callable[[], grpc.aio.StreamStreamCall],
        call: Callable[..., Awaitable[Answer]],
    ) -> None:
        self.name = name
        self._open_stream = open_stream
        self._call = call
        self._stream: grpc.aio.StreamStreamCall | None = None
        self.calls = False  # the manager has no such stream: one call per request

    def open(self) -> None:
        """Open the stream now, with the session: the manager takes in a new call at its own
        pace, and the first request should not wait for that behind a burst of others."""
        if not self.calls and self._stream is None:
            self._stream = self._open_stream()

    async def ask(self, request: Request, timeout: float, call_timeout: float | None = None) -> Answer:
        """Send `request` and return its answer; raises the manager's AioRpcError, TimeoutError
        if it is not answered within `timeout` (`call_timeout` as a call), or StreamEnded."""
        if self.calls:
            return await self._call(request, timeout=call_timeout or timeout)
        self.open()
        stream = cast(grpc.aio.StreamStreamCall, self._stream)
        try:
            async with asyncio.timeout(timeout):
                # A stream that already ended (opened with the session, refused since) takes no
                # write; its read raises the status it ended with.
                with contextlib.suppress(asyncio.InvalidStateError):
                    await stream.write(request)
                answer = await stream.read()
        except grpc.aio.AioRpcError as exc:
            self.close()
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.info("the manager has no %s stream: one call per request", self.name)
            self.calls = True
            return await self.ask(request, timeout, call_timeout)
        except BaseException:
            # Its answer may still come, and would be taken for the next request's: start afresh.
            self.close()
            raise
        if answer is grpc.aio.EOF:
            self.close()
            raise StreamEnded(f"the manager ended the {self.name} stream")
        return cast(Answer, answer)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
