"""`warren events`: the cluster's events as they happen (ADR 45), as Docker's `docker events`.

When its manager goes away, the stream resumes on another after the last event it printed, so
the output has no gap and no duplicate.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from warren.cli.errors import CliError, Exit
from warren.cli.flags import value_type
from warren.text import escape_control, shown

_UNIX_TIME = re.compile(r"\d{1,12}(\.\d{1,9})?")
FILTER_KEYS = ("type", "service", "node", "event")


def register(groups: Any) -> None:
    p = groups.add_parser(
        "events",
        help="stream the cluster's events",
        description="Events of services, rollouts, tasks, nodes, secrets, configs, volumes, networks and "
        "leader changes, from the committed state: any manager serves them. Without --since, from now on. "
        "With --until, exits 0 there; otherwise follows until Ctrl-C. TIME is RFC 3339 "
        "(2025-01-02T10:00:00Z), a Unix time (1735812000) or a duration ago (10m).",
    )
    p.add_argument(
        "--since",
        type=value_type(lambda t: parse_time(t, "--since")),
        metavar="TIME",
        help="first the history from then",
    )
    p.add_argument("--until", type=value_type(lambda t: parse_time(t, "--until")), metavar="TIME", help="exit 0 there")
    p.add_argument("--after", type=value_type(parse_event_id), metavar="ID", help="resume after this event id")
    p.add_argument(
        "--filter",
        "-f",
        dest="filters",
        action="append",
        type=value_type(parse_filter),
        metavar="KEY=VALUE",
        help="type=service|task|node|secret|config|network|volume|cluster, service=NAME, node=NAME, "
        "event=ACTION; repeat a key for any of its values, combine keys for all of them",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=cmd_events)


def parse_time(text: str, flag: str, now: float | None = None) -> float:
    """A Unix time from RFC 3339, a Unix time, or a duration ago (as Docker's --since)."""
    from warren.cli.service_logs import parse_since

    text = text.strip()
    if _UNIX_TIME.fullmatch(text):
        return float(text)
    try:
        return parse_since(text, now)
    except ValueError:
        raise ValueError(
            f"invalid {flag} {shown(text)}: use a time (2025-01-02T10:00:00Z), a Unix time or a duration (10m)"
        ) from None


def parse_event_id(text: str) -> str:
    from warren.events import format_id, parse_id

    return format_id(*parse_id(text))


def parse_filter(text: str) -> tuple[str, str]:
    from warren.events import parse_filters

    key, eq, value = text.partition("=")
    if not eq:
        raise ValueError(f"invalid --filter {shown(text)}: use KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}")
    parse_filters([(key.strip(), value.strip())])
    return key.strip(), value.strip()


def cmd_events(args: argparse.Namespace) -> int:
    import time

    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    if args.since is not None and args.until is not None and args.until < args.since:
        raise CliError("--until is before --since", Exit.USAGE)
    if args.after and args.since is not None:
        raise CliError("give either --after (a resume) or --since, not both", Exit.USAGE)
    filters = [pb.EventFilter(key=k, value=v) for k, v in args.filters or ()]
    started = time.time()
    last_id: str = args.after or ""
    out = sys.stdout
    with connect(args) as client:
        while True:
            # A resume goes on after the last event printed; before the first one, from when
            # this command started (or its --since), so nothing in between is lost.
            since = 0.0 if last_id else (args.since if args.since is not None else started)
            request = pb.StreamEventsRequest(after=last_id, since=since, until=args.until or 0.0, filters=filters)
            stream = client.stream("StreamEvents", request)
            printed = False
            try:
                for event in stream:
                    out.write(format_json(event) if args.format == "json" else format_text(event))
                    out.flush()
                    last_id, printed = event.id, True
                return 0  # --until reached
            except KeyboardInterrupt:
                return 0  # Ctrl-C is how a follow ends
            except CliError as exc:
                # Before its first event, a stream already tried every manager; after it, the
                # manager went away: resume on the others (they are tried in turn).
                if exc.code != Exit.UNAVAILABLE or not printed:
                    raise
            finally:
                stream.close()


def format_text(event: Any) -> str:
    """Docker's shape: TIME TYPE ACTION ACTOR_ID (name=..., key=value...)."""
    import datetime as dt

    moment = dt.datetime.fromtimestamp(event.time, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    attributes = {"name": event.actor_name} if event.actor_name else {}
    attributes |= dict(sorted(event.attributes.items()))
    shown_attributes = ", ".join(f"{k}={v}" for k, v in attributes.items())
    line = f"{moment} {event.type} {event.action} {event.actor_id}"
    return escape_control(f"{line} ({shown_attributes})" if shown_attributes else line) + "\n"


def format_json(event: Any) -> str:
    import json

    record = {
        "id": event.id,
        "time": event.time,
        "type": event.type,
        "action": event.action,
        "actor": {"id": event.actor_id, "name": event.actor_name},
        "attributes": dict(sorted(event.attributes.items())),
    }
    return json.dumps(record, separators=(",", ":")) + "\n"
