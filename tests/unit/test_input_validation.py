"""Input that used to slip through validation (issue #10, item 6): trailing newlines, control
characters, other scripts' digits, unbounded health checks and env names; and messages that
echo input cut short. Property tests feed control characters to every validator."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren import nodereports, pki, validate
from warren.agent import settings as agent_settings
from warren.api.v1 import control_pb2 as cpb
from warren.cli import output, units
from warren.constraints import ConstraintError, parse_constraint
from warren.model import HealthCheck, ServiceSpec
from warren.network import lb
from warren.runtime.containerd import oci, reference
from warren.text import MAX_SHOWN, escape_control, shown
from warren.validate import ValidationError, check_spec

# Every C0 control, DEL, and C1 (0x9b is CSI, which terminals obey like ESC [).
CONTROL = st.sampled_from([chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))])
WG_KEY = "hbBJ0bBLgSCd63QIGcByKs0dRyjeupETGMwmXzWXgXE="


def _refused(check: Callable[[str], object], text: str) -> bool:
    try:
        check(text)
    except (ValueError, ConstraintError, pki.PkiError):  # ValidationError and ConstraintError are ValueErrors
        return True
    return False


def _spec(**fields: object) -> ServiceSpec:
    return ServiceSpec(**{"name": "web", "image": "busybox", **fields})  # type: ignore[arg-type]


def _health(**fields: object) -> ServiceSpec:
    return _spec(health=HealthCheck(**{"kind": "cmd", "command": ("true",), **fields}))  # type: ignore[arg-type]


# Each validator with an input it accepts. Inserting a control character anywhere must make
# every one of them refuse it.
VALIDATORS: dict[str, tuple[Callable[[str], object], str]] = {
    "service name": (lambda s: validate.check_name("service", s), "web"),
    "image": (lambda s: check_spec(_spec(image=s)), "busybox:1.36"),
    "service label key": (lambda s: check_spec(_spec(labels={s: "v"})), "tier"),
    "service label value": (lambda s: check_spec(_spec(labels={"tier": s})), "front end"),
    "node label": (lambda s: validate.check_labels("node label", {"zone": s}), "eu-west"),
    "node label key": (lambda s: validate.check_label_key("node label", s), "zone"),
    "node description": (lambda s: nodereports.check_node_description(s, {}, 0, 0), "worker-1"),
    "constraint": (lambda s: check_spec(_spec(constraints=(s,))), "node.labels.k==v"),
    "constraint parser": (parse_constraint, "node.role == manager"),
    "env name": (lambda s: check_spec(_spec(env={s: "1"})), "JAVA_OPTS"),
    "stop signal": (validate.signal_number, "SIGTERM"),
    "stop signal in spec": (lambda s: check_spec(_spec(stop_signal=s)), "15"),
    "health target tcp": (lambda s: check_spec(_health(kind="tcp", command=(), target=s)), "db:5432"),
    "health target http": (lambda s: check_spec(_health(kind="http", command=(), target=s)), "http://x/h"),
    "host:port": (lambda s: validate.check_hostport("x", s), "10.0.0.1:51820"),
    "wireguard key": (lambda s: nodereports.check_wireguard(s, ""), WG_KEY),
    "cli size": (units.parse_size, "512M"),
    "cli duration": (units.parse_duration, "1h30m"),
    "cli cpus": (units.parse_cpus, "0.5"),
    "cli count": (units.parse_count, "3"),
    "cli port": (units.parse_port, "8080"),
    "cli publish": (units.parse_publish, "8080:80/udp"),
    "cli address": (units.parse_hostport, "127.0.0.1:4242"),
    "registry reference": (reference.parse_reference, "registry.local:5000/team/app:1.0"),
    "agent interface name": (lambda s: agent_settings.AgentSettings(wireguard_interface=s).check(), "wg-warren"),
    "agent cgroup parent": (agent_settings.check_cgroup_parent, "/warren/node1"),
    "nftables table": (lambda s: lb.removal(s), "warren"),
    "image user": (oci.parse_user, "1000:100"),
    "cli key=value": (lambda s: validate.check_labels("label", dict([units.parse_key_value(s)])), "tier=front"),
}


@given(char=CONTROL, position=st.integers(1, 80))
def test_a_join_token_with_a_control_character_inside_is_refused(char: str, position: int) -> None:
    """Whitespace around a pasted token is forgiven on purpose (`--token "$(cat file)"`)."""
    token = pki.make_join_token("a" * 64, pki.new_token_secret())
    assert _refused(pki.parse_join_token, token[:position] + char + token[position:])


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_each_validator_accepts_its_sample(name: str) -> None:
    check, sample = VALIDATORS[name]
    assert not _refused(check, sample), name


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@given(data=st.data())
def test_a_control_character_anywhere_is_refused(name: str, data: st.DataObject) -> None:
    check, sample = VALIDATORS[name]
    position = data.draw(st.integers(0, len(sample)), label="position")
    char = data.draw(CONTROL, label="char")
    text = sample[:position] + char + sample[position:]
    assert _refused(check, text), f"{name} accepted {text!r}"


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_a_trailing_newline_is_refused(name: str) -> None:
    """`$` matches before a trailing newline: every pattern must be used with fullmatch."""
    check, sample = VALIDATORS[name]
    assert _refused(check, sample + "\n"), name


@pytest.mark.parametrize(
    "spec",
    [
        _spec(name="web\n"),
        _spec(image="busybox\n"),
        _spec(labels={"key\n": "v"}),
        _spec(constraints=("node.labels.k\n==v",)),
        _spec(constraints=("node.labels.k==v\n",)),
        _spec(env={"A\nB": "1"}),
        _spec(env={"1A": "1"}),
        _spec(env={"A=B": "1"}),
        _spec(env={"": "1"}),
    ],
    ids=["name", "image", "label key", "constraint field", "constraint value", "env newline", "env digit", "env =",
         "env empty"],
)  # fmt: skip
def test_the_issues_examples_are_refused(spec: ServiceSpec) -> None:
    with pytest.raises(ValidationError):
        check_spec(spec)


@pytest.mark.parametrize("name", ["PATH", "_x", "JAVA_OPTS", "spring.profiles.active", "my-var", "a1"])
def test_env_names_accepted(name: str) -> None:
    check_spec(_spec(env={name: "value\nwith a newline is fine"}))


# Superscript two, Arabic-Indic nine, fullwidth one, fullwidth "SIGTERM".
@pytest.mark.parametrize(
    "text", ["\u00b2", "\u0669", "\uff11", "1\u00b2", "SIG\u00b2", "\uff33\uff29\uff27\uff34\uff25\uff32\uff2d"]
)
def test_stop_signal_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValidationError, match="invalid stop signal"):
        validate.signal_number(text)
    with pytest.raises(ValidationError, match="invalid stop signal"):
        check_spec(_spec(stop_signal=text))


@pytest.mark.parametrize("text", ["\u00b2", "\u0669", "\uff11\uff12", "8080\u00b2"])
def test_cli_numbers_take_ascii_digits_only(text: str) -> None:
    for parse in (units.parse_count, units.parse_port, units.parse_size, units.parse_cpus, units.parse_duration):
        with pytest.raises(ValueError, match="invalid"):
            parse(text)
    with pytest.raises(ValueError, match="invalid address"):
        units.parse_hostport(f"host:{text}")


@pytest.mark.parametrize(
    ("parse", "text", "needle"),
    [
        (units.parse_count, "99999999999999999999999", "at most 2147483647"),
        pytest.param(units.parse_count, "9" * 5000, "at most", id="5000 digits"),  # int() refuses those
        (units.parse_cpus, "1e30", "invalid CPU count"),
        (units.parse_cpus, "99999999999", "at most 9223372036 cores"),
        (units.parse_cpus, "NaN", "invalid CPU count"),
        (units.parse_size, "99999999999T", "at most"),
        (units.parse_duration, "99999999999999h", "at most a year"),
        pytest.param(units.parse_duration, "9" * 400, "at most a year", id="400 digits"),
        (units.parse_seconds, "0s", "more than 0"),
        (units.parse_publish, "99999:1", "expected 1-65535"),
    ],
)
def test_cli_numbers_out_of_range_are_value_errors(parse: Callable[[str], object], text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as err:
        parse(text)
    assert len(str(err.value)) < 200  # the input is echoed cut short


def test_health_check_fields_are_bounded() -> None:
    check_spec(_health(command=("/bin/sh", "-c", "curl -f localhost")))
    bad = [
        _health(command=("x",) * (validate.MAX_ITEMS + 1)),
        _health(command=("x" * (validate.MAX_ARGV_BYTES + 1),)),
        _health(command=("a\x00b",)),
        _health(kind="http", command=(), target="http://" + "x" * validate.MAX_HEALTH_TARGET),
        _health(kind="http", command=(), target="ftp://x"),
        _health(kind="tcp", command=(), target="no-port"),
        _health(retries=validate.MAX_HEALTH_RETRIES + 1),
        _health(retries=0),
        _health(interval=0.0),
        _health(timeout=float("inf")),
    ]
    for spec in bad:
        with pytest.raises(ValidationError):
            check_spec(spec)


def test_label_values_with_terminal_escapes_or_nul_are_refused() -> None:
    for value in ("\x1b[2J\x1b[31mred", "a\x00b", "\x9b31m", "x" * (validate.MAX_VALUE + 1)):
        with pytest.raises(ValidationError, match="control characters"):
            validate.check_labels("node label", {"k": value})
    validate.check_labels("node label", {"k": "with spaces and ünïcode"})


@given(st.text(max_size=300))
def test_shown_is_short_and_has_no_raw_control_characters(text: str) -> None:
    quoted = shown(text)
    assert len(quoted) <= 4 * MAX_SHOWN + 40
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in quoted)


def test_messages_echo_a_long_input_cut_short() -> None:
    with pytest.raises(ValidationError) as err:
        validate.check_name("service", "x" * 100_000)
    assert len(str(err.value)) < 300 and "100000 characters" in str(err.value)
    with pytest.raises(ConstraintError) as cerr:
        parse_constraint("node.labels." + "k" * 100_000)
    assert len(str(cerr.value)) < 600


@given(st.text())
def test_escape_control_leaves_no_control_characters(text: str) -> None:
    escaped = escape_control(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in escaped)
    if not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        assert escaped == text


def test_tables_and_fields_print_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_table(["KEY"], [("\x1b[2Jx",)])
    output.print_fields([("Labels", ["k=\x1b]0;pwned\x07", "z=\x9b31m"])])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b[2Jx" in out and "k=\\x1b]0;pwned\\x07" in out and "z=\\x9b31m" in out


def test_an_image_user_in_other_digits_is_a_clear_failure_not_a_crash() -> None:
    for user in ("\u0669", " 5", "5\n", "1:\u00b2", str(2**32), "9" * 5000):
        with pytest.raises(oci.SpecError):
            oci.parse_user(user)
    from warren.agent.runtime import RuntimeFailure
    from warren.runtime.exec.users import resolve_user

    with pytest.raises(RuntimeFailure, match="unable to find user"):
        resolve_user("\u00b2")
    assert resolve_user("0:0") == (0, 0)


def test_thousands_of_digits_are_a_validation_error_not_a_crash() -> None:
    """int() refuses strings of more than 4300 digits with a plain ValueError, which the API
    would report as INTERNAL."""
    with pytest.raises(ValidationError, match="invalid stop signal"):
        validate.signal_number("9" * 5000)
    with pytest.raises(ValidationError, match="invalid stop signal"):
        check_spec(_spec(stop_signal="9" * 5000))


@pytest.mark.parametrize(
    "name",
    ["ops\n", "a b", pytest.param("ops\x1b[2J" + "x" * 100_000, id="escape-and-100k"), "-ops", "", "a" * 64],
)
def test_admin_certificate_names_are_checked_whole(name: str) -> None:
    from warren.manager.controlcerts import CertificatesControl
    from warren.manager.server import ApiError

    request = cpb.IssueAdminCertificateRequest(name=name, csr_pem="unused: the name is refused first")
    with pytest.raises(ApiError) as refused:
        asyncio.run(CertificatesControl().IssueAdminCertificate(request, None))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.value.message
    assert "invalid admin certificate name" in message and len(message) < 2 * MAX_SHOWN + 200
    assert "\n" not in message and "\x1b" not in message


# The compiled patterns of warren/validate.py and warren/nodereports.py are written for
# fullmatch: `match` and `search` accept a name with a newline, a space or anything else after a
# valid prefix.
_VALIDATION_PATTERNS = sorted(
    {
        name
        for module in (validate, nodereports)
        for name, value in vars(module).items()
        if isinstance(value, re.Pattern)
    }
)


def test_validation_patterns_are_only_ever_fullmatched() -> None:
    assert {"NAME_RE", "ENV_NAME_RE", "PRINTABLE_RE", "_WG_KEY_RE"} <= set(_VALIDATION_PATTERNS)
    partial = re.compile(rf"\b({'|'.join(_VALIDATION_PATTERNS)})\s*\.\s*(match|search|finditer|findall)\s*\(")
    package = Path(validate.__file__).parent
    found = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if partial.search(line)
    ]
    assert not found, "use fullmatch with the patterns of warren.validate:\n" + "\n".join(found)
