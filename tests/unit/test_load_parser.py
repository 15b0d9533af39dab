"""The hey summary parser of tests/fixtures/load.py, on summaries hey 0.1.4 (Debian 12) printed
here: tests/unit/data/hey/*.txt, each captured against a server on 127.0.0.1 that answered,
went away and came back (refused), reset or closed connections, or never answered (timeout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.load import HeyLoad, error_kind, parse_hey

SAMPLES = Path(__file__).parent / "data" / "hey"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_a_server_that_went_away_and_came_back_gives_responses_and_refusals() -> None:
    result = parse_hey(sample("refused-then-back.txt"))
    assert result.statuses == {200: 1746}
    assert result.errors == {"refused": 450}
    assert result.requests == 2196 and result.failed == 450 and result.succeeded == 1746
    assert result.duration_s == pytest.approx(3.0031)
    assert result.rate == pytest.approx(731.2331)
    # hey's own figures agree with each other: requests = rate x duration.
    assert result.requests == pytest.approx(result.rate * result.duration_s, abs=1)
    [message] = result.error_messages
    assert message.startswith('Get "http://127.0.0.1:18123/": dial tcp') and result.error_messages[message] == 450


def test_resets_listed_one_line_per_connection_are_summed() -> None:
    result = parse_hey(sample("reset.txt"))
    assert result.statuses == {} and result.errors == {"reset": 20}
    assert result.requests == result.failed == 20
    assert len(result.error_messages) == 20  # hey keeps each message apart: they name the client port


@pytest.mark.parametrize(("name", "kind", "count"), [("eof.txt", "eof", 20), ("timeout.txt", "timeout", 4)])
def test_closed_and_unanswered_requests_are_counted_by_kind(name: str, kind: str, count: int) -> None:
    result = parse_hey(sample(name))
    assert result.errors == {kind: count} and result.failed == count == result.requests


def test_a_run_stopped_by_sigint_reports_what_was_done() -> None:
    result = parse_hey(sample("stopped-by-sigint.txt"))
    assert result.statuses == {200: 292} and result.errors == {} and result.failed == 0
    assert result.duration_s == pytest.approx(1.4991) and result.rate == pytest.approx(194.7856)
    assert result.as_dict() == {
        "requests": 292,
        "failed": 0,
        "statuses": {"200": 292},
        "errors": {"refused": 0, "reset": 0, "eof": 0, "timeout": 0, "unreachable": 0, "other": 0},
        "duration_s": 1.499,
        "rate_per_s": 194.8,
    }


def test_non_2xx_responses_count_as_failed() -> None:
    text = sample("stopped-by-sigint.txt").replace("[200]\t292 responses", "[200]\t290 responses\n  [502]\t2 responses")
    result = parse_hey(text)
    assert result.statuses == {200: 290, 502: 2} and result.requests == 292 and result.failed == 2


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('Get "http://10.0.0.1/": dial tcp 10.0.0.1:80: connect: connection refused', "refused"),
        ('Get "http://x/": read tcp 1.2.3.4:5->6.7.8.9:80: read: connection reset by peer', "reset"),
        ('Get "http://x/": write tcp 1.2.3.4:5->6.7.8.9:80: write: broken pipe', "reset"),
        ('Get "http://x/": EOF', "eof"),
        ('Get "http://x/": context deadline exceeded (Client.Timeout exceeded while awaiting headers)', "timeout"),
        ('Get "http://x/": dial tcp 10.0.0.1:80: i/o timeout', "timeout"),
        ('Get "http://x/": dial tcp 10.0.0.1:80: connect: no route to host', "unreachable"),
        ('Get "http://x/": dial tcp 10.0.0.1:80: connect: network is unreachable', "unreachable"),
        ('Get "http://x/": stopped after 10 redirects', "other"),
    ],
)
def test_error_kinds(message: str, kind: str) -> None:
    assert error_kind(message) == kind


@pytest.mark.parametrize("text", ["", "hey: command not found\n", "Usage: hey [options...] <url>\n"])
def test_what_is_not_a_summary_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a hey summary"):
        parse_hey(text)


def test_the_command_line_runs_until_stopped_in_a_namespace_without_keepalive() -> None:
    load = HeyLoad("http://10.1.2.3:8080/", concurrency=8, rate_per_worker=25, netns="lab-h1")
    try:
        assert load.argv() == [
            *("nsenter", "--net=/run/netns/lab-h1", "hey", "-z", "3600s", "-c", "8", "-t", "5", "-q", "25"),
            *("-disable-keepalive", "http://10.1.2.3:8080/"),
        ]
        unlimited = HeyLoad("http://127.0.0.1:1/", rate_per_worker=None, keepalive=True, duration=2)
        assert unlimited.argv() == ["hey", "-z", "2s", "-c", "4", "-t", "5", "http://127.0.0.1:1/"]
        unlimited.close()
    finally:
        load.close()
