"""`warren cluster admin-cert ...` and `warren cluster ca`: operators' certificates and the CA.

An admin certificate's key is made here, where the CLI runs; only its CSR goes to a manager,
so the key never travels (ADR 24).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from warren.cli import units
from warren.cli.flags import add_format_flag, value_type

POLL_PERIOD = 1.0  # seconds between progress reads while `cluster ca --rotate` waits


def register(cmds: Any) -> None:
    group = cmds.add_parser("admin-cert", help="create, list and revoke operators' admin certificates")
    group.set_defaults(group_parser=group)
    sub = group.add_subparsers(metavar="COMMAND", title="commands")

    p = sub.add_parser(
        "create",
        help="issue an admin certificate for an operator (the key is made here)",
        description="Make a key here, have a manager sign it as an admin certificate called NAME, and "
        "write the credentials to --out DIR (ca.pem, cert.pem, key.pem) or into a new CLI context.",
    )
    p.add_argument("name", metavar="NAME", help="who it is for, e.g. alice (unique among valid certificates)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="write ca.pem, cert.pem and key.pem (0600) here")
    where.add_argument(
        "--context",
        dest="new_context",
        metavar="CONTEXT",
        help="store the credentials beside the CLI config and add a context of this name",
    )
    p.add_argument(
        "--validity",
        type=value_type(units.parse_duration),
        metavar="DURATION",
        help="how long it is valid, between 1h and 8760h (default: 2160h, 90 days)",
    )
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("ls", help="list admin certificates")
    add_format_flag(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "revoke",
        help="refuse an admin certificate from now on, on every manager",
        description="Revoke the admin certificate NAME (or id). Every manager refuses it once this returns. "
        "The certificate this command calls with cannot be revoked: use another one.",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser(
        "renew",
        help="re-issue this context's admin certificate (e.g. during a CA rotation), with a new key",
    )
    p.add_argument("--validity", type=value_type(units.parse_duration), metavar="DURATION")
    p.set_defaults(func=cmd_renew)

    p = cmds.add_parser(
        "ca",
        help="show the cluster CA, or rotate it",
        description="Show the cluster's root CA and the progress of a rotation. --rotate makes a new root: "
        "every node's certificate is re-issued from it while both are trusted, then the old one is dropped.",
    )
    p.add_argument("--rotate", action="store_true", help="start a CA rotation and wait until it completes")
    p.add_argument("-d", "--detach", action="store_true", help="with --rotate: return once it has started")
    add_format_flag(p)
    p.set_defaults(func=cmd_ca)


def _key_and_csr() -> tuple[bytes, bytes]:
    from warren import pki

    key = pki.generate_key()
    return key, pki.make_csr(key)


def _validity(args: argparse.Namespace) -> float:
    return args.validity or 0.0


def cmd_create(args: argparse.Namespace) -> int:
    from warren import clientconfig, tls
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect
    from warren.cli.errors import CliError, Exit

    if args.out is not None:
        directory = args.out
    else:
        base = Path(args.config) if args.config else clientconfig.config_path()
        directory = base.parent / "credentials" / args.new_context
    if (directory / tls.CERT_FILE).exists() or (directory / tls.KEY_FILE).exists():
        raise CliError(f"{directory} already holds credentials; choose another place", Exit.CONFLICT)
    key, csr = _key_and_csr()
    with connect(args) as client:
        request = pb.IssueAdminCertificateRequest(name=args.name, csr_pem=csr.decode(), validity=_validity(args))
        answer = client.call("IssueAdminCertificate", request)
        managers = list(client.managers)
    try:
        tls.save_credentials(directory, answer.ca_pem.encode(), answer.cert_pem.encode(), key)
    except OSError as exc:
        raise CliError(f"cannot write the credentials to {directory}: {exc.strerror or exc}") from None
    cert = answer.certificate
    print(f"Admin certificate {cert.name} ({cert.id}) issued, valid until {_date(cert.not_after)}.")
    if args.new_context:
        context = clientconfig.Context(
            name=args.new_context,
            managers=managers,
            ca=directory / tls.CA_FILE,
            cert=directory / tls.CERT_FILE,
            key=directory / tls.KEY_FILE,
        )
        path = clientconfig.save_context(context, make_current=False, path=Path(args.config) if args.config else None)
        print(f"Context {args.new_context!r} added to {path}; use it with `warren --context {args.new_context} ...`.")
    else:
        print(f"Credentials written to {directory}/ (key.pem is the private key: hand it over safely).")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    with connect(args) as client:
        certs = client.call("ListAdminCertificates", pb.ListAdminCertificatesRequest()).certificates
    if args.format == "json":
        output.print_json(list(certs))
        return 0
    now = time.time()
    output.print_table(
        ["NAME", "ID", "CREATED", "EXPIRES", "CA", "STATUS"],
        [
            (
                c.name,
                output.short_id(c.id),
                output.ago(c.created_at, now),
                _date(c.not_after),
                c.ca,
                _status(c, now),
            )
            for c in certs
        ],
    )
    return 0


def _status(cert: Any, now: float) -> str:
    if cert.revoked:
        from warren.cli import output

        return f"revoked {output.ago(cert.revoked_at, now)}"
    if cert.not_after <= now:
        return "expired"
    if cert.ca == "old":
        return "untrusted (old CA)"
    return "valid"


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_revoke(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.client import connect

    with connect(args) as client:
        cert = client.call("RevokeAdminCertificate", pb.RevokeAdminCertificateRequest(name=args.name))
    print(f"Admin certificate {cert.name} ({cert.id}) revoked: every manager refuses it.")
    return 0


def _renew_own(client: Any, validity: float) -> Any:
    """Re-issue the certificate of the client's context, with a new key, and write it over the
    context's files (key first). Returns the certificate's description."""
    from warren import tls
    from warren.api.v1 import control_pb2 as pb
    from warren.cli.errors import CliError

    key, csr = _key_and_csr()
    answer = client.call(
        "RenewAdminCertificate", pb.RenewAdminCertificateRequest(csr_pem=csr.decode(), validity=validity)
    )
    ctx = client.context
    try:
        tls.replace_credential_files(ctx.ca, ctx.cert, ctx.key, answer.ca_pem.encode(), answer.cert_pem.encode(), key)
    except OSError as exc:
        raise CliError(f"cannot rewrite the credentials of context {ctx.name!r}: {exc.strerror or exc}") from None
    return answer.certificate


def cmd_renew(args: argparse.Namespace) -> int:
    from warren.cli.client import connect

    with connect(args) as client:
        cert = _renew_own(client, _validity(args))
    print(f"Admin certificate {cert.name} re-issued from the current CA, valid until {_date(cert.not_after)}.")
    return 0


def cmd_ca(args: argparse.Namespace) -> int:
    from warren.api.v1 import control_pb2 as pb
    from warren.cli import output
    from warren.cli.client import connect

    if args.detach and not args.rotate:
        from warren.cli.errors import CliError, Exit

        raise CliError("--detach goes with --rotate", Exit.USAGE)
    if not args.rotate:
        with connect(args) as client:
            status = client.call("GetCAStatus", pb.GetCAStatusRequest())
        if args.format == "json":
            output.print_json(status)
        else:
            _print_status(status)
        return 0
    with connect(args) as client:
        status = client.call("RotateCA", pb.RotateCARequest())
        cert = _renew_own(client, 0.0)
    print(f"CA rotation started: the new root is sha256:{status.fingerprint}.")
    print(f"This context's admin certificate ({cert.name}) was re-issued from the new CA.")
    print(
        "Join tokens pin the CA: tokens handed out before now no longer work; "
        "print new ones with `warren cluster join-token`."
    )
    print(
        "Other admin certificates stop working when the rotation completes: their holders run "
        "`warren cluster admin-cert renew` before then, or get a new one with `admin-cert create`."
    )
    if args.detach:
        return 0
    # A new client: the one above presents the old certificate, refused once the rotation ends.
    last = ""
    with connect(args) as client:
        while True:
            status = client.call("GetCAStatus", pb.GetCAStatusRequest())
            if not status.previous_fingerprint:
                print(
                    "CA rotation complete: every node holds a certificate from the new CA; "
                    "the old one is no longer trusted."
                )
                return 0
            line = f"{status.nodes_done}/{status.nodes} nodes on the new CA"
            if status.pending:
                line += f" (waiting for {', '.join(p.hostname or p.node_id for p in status.pending[:5])})"
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(POLL_PERIOD)


def _print_status(status: Any) -> None:
    from warren.cli import output

    output.print_fields(
        [
            ("CA fingerprint", f"sha256:{status.fingerprint}"),
            ("Expires", _date(status.not_after)),
            (
                "Rotation",
                f"under way since {output.timestamp(status.rotation_started_at)}"
                if status.previous_fingerprint
                else "none",
            ),
        ]
        + (
            [
                ("Previous CA", f"sha256:{status.previous_fingerprint} (still trusted)"),
                ("Nodes on the new CA", f"{status.nodes_done}/{status.nodes}"),
                ("Old admin certificates", ", ".join(status.old_admin_certificates) or "none"),
            ]
            if status.previous_fingerprint
            else []
        )
    )
    if status.pending:
        print()
        output.print_table(
            ["NODE", "HOSTNAME", "WAITING FOR"],
            [(output.short_id(p.node_id), p.hostname, p.reason) for p in status.pending],
        )
