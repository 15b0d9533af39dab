"""Reading a paged list to its end (ADR 51), for any caller of the Control API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The most items a page may hold (the servers cap a larger page_size at this). Their bytes bound
# a page too (3 MiB, under gRPC's default 4 MiB), so a large page still fits any client.
MAX_PAGE_SIZE = 10_000


def all_pages(call: Callable[[Any], Any], request: Any, field: str) -> list[Any]:
    """Every item of a paged list: `call(request)` once per page, following next_page_token until
    the last page, and the `field` of each answer. `request` itself is left unchanged.

    A request that names no page_size asks for the largest pages: the whole list is wanted, and
    each page costs a round trip and the server a pass over the list (#15: `service ps` of
    10,000 tasks took ten pages of the default 1,000)."""
    items: list[Any] = []
    page = type(request)()
    page.CopyFrom(request)
    if not page.page_size:
        page.page_size = MAX_PAGE_SIZE
    while True:
        reply = call(page)
        items.extend(getattr(reply, field))
        if not reply.next_page_token:
            return items
        page.page_token = reply.next_page_token
