"""What a running agent needs to know about its own certificate, with the standard library only.

`cryptography` (used by ``warren.pki``) costs a worker agent about 9 MiB of its 60 MB budget, and
a running agent needs only two facts about its credentials: that the key matches the certificate
(OpenSSL checks that for us in ``ssl.SSLContext.load_cert_chain``), and when the certificate
expires, so that it renews in time. The validity dates are read here from the DER with a minimal
walk of the certificate's first fields; everything else (issuing, verifying, renewing) stays in
``warren.pki`` and is imported only when a renewal is due.
"""

from __future__ import annotations

import binascii
import datetime as dt
import os
import ssl


class PkiError(Exception):
    """A certificate, key, CSR or token could not be used; the message is fit for an operator.
    (Re-exported as ``warren.pki.PkiError``.)"""


_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_SEQUENCE = 0x30
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_EXPLICIT_0 = 0xA0  # [0] EXPLICIT Version


def cert_der(cert_pem: bytes | str) -> bytes:
    """The DER of the first certificate in a PEM text."""
    pem = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    start = pem.find(_BEGIN)
    end = pem.find(_END, start + 1)
    if start < 0 or end < 0:
        raise PkiError("not a valid PEM certificate")
    try:
        return binascii.a2b_base64(pem[start + len(_BEGIN) : end])
    except binascii.Error as exc:
        raise PkiError("not a valid PEM certificate") from exc


def validity(cert_pem: bytes | str) -> tuple[dt.datetime, dt.datetime]:
    """A certificate's (notBefore, notAfter), timezone-aware UTC (RFC 5280 section 4.1)."""
    der = cert_der(cert_pem)
    try:
        tag, body, _ = _tlv(der, 0)  # Certificate
        _expect(tag, _SEQUENCE)
        tag, tbs, _ = _tlv(body, 0)  # TBSCertificate
        _expect(tag, _SEQUENCE)
        pos = 0
        tag, _, after = _tlv(tbs, pos)
        if tag == _EXPLICIT_0:  # version; absent in v1 certificates
            pos = after
        for _field in ("serialNumber", "signature", "issuer"):
            _, _, pos = _tlv(tbs, pos)
        tag, dates, _ = _tlv(tbs, pos)  # Validity
        _expect(tag, _SEQUENCE)
        tag, not_before, pos = _tlv(dates, 0)
        before = _time(tag, not_before)
        tag, not_after, _ = _tlv(dates, pos)
        return before, _time(tag, not_after)
    except (IndexError, ValueError) as exc:
        raise PkiError(f"not a valid certificate: {exc}") from None


def renewal_due(cert_pem: bytes | str, now: dt.datetime | None = None) -> bool:
    """Whether less than a third of the certificate's lifetime remains (or it has expired)."""
    not_before, not_after = validity(cert_pem)
    now = now or dt.datetime.now(dt.UTC)
    return not_after - now < (not_after - not_before) / 3


def key_matches_files(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> bool:
    """Whether the key file holds the private half of the certificate file. Raises PkiError when
    either file cannot be parsed at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    except ssl.SSLError as exc:
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):  # the latter: another key type
            return False
        raise PkiError(f"unusable certificate or key: {exc.reason or exc}") from None
    return True


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, contents, position after) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, data[pos:end], end


def _expect(tag: int, wanted: int) -> None:
    if tag != wanted:
        raise ValueError(f"unexpected DER tag {tag:#x}")


def _time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: YY >= 50 means 19YY
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:  # YYYYMMDDHHMMSSZ
        raise ValueError(f"unexpected time tag {tag:#x}")
    if len(text) != 15 or not text.endswith("Z"):
        raise ValueError(f"unsupported time {raw!r}")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
