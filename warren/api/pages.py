"""Reading a paged list to its end (ADR 51), for any caller of the Control API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def all_pages(call: Callable[[Any], Any], request: Any, field: str) -> list[Any]:
    """Every item of a paged list: `call(request)` once per page, following next_page_token until
    the last page, and the `field` of each answer. `request` itself is left unchanged."""
    items: list[Any] = []
    page = type(request)()
    page.CopyFrom(request)
    while True:
        reply = call(page)
        items.extend(getattr(reply, field))
        if not reply.next_page_token:
            return items
        page.page_token = reply.next_page_token
