"""Cluster PKI and join tokens, modelled on SwarmKit: one root CA per cluster, role in the cert.

Every node (and every operator, as "admin") proves who it is with a certificate signed by the
cluster's root CA. The CA, not the requester, decides the subject: CN is the node id, OU the role,
O the cluster id, so a node cannot promote itself by editing its CSR. Join tokens carry the CA's
fingerprint (so a joining node can pin the CA it is given) and a secret (so the manager can tell
a worker from a manager join).

Crypto only: no grpc, no files. The gRPC and on-disk adapters live in ``warren.tls``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Defined without cryptography, so that a running agent can catch it without loading cryptography.
from warren.certinfo import PkiError as PkiError

MANAGER_TLS_NAME = "warren-manager"
"""DNS SAN on every manager cert; clients verify this name, not the address they dialled."""

ROLE_MANAGER = "manager"
ROLE_WORKER = "worker"
ROLE_ADMIN = "admin"
ROLES = frozenset({ROLE_MANAGER, ROLE_WORKER, ROLE_ADMIN})

_OU_PREFIX = "warren-"
_CA_COMMON_NAME = "warren-root-ca"
_CA_VALIDITY = dt.timedelta(days=3650)
_CLOCK_SKEW = dt.timedelta(minutes=5)  # backdate notBefore so a slightly-behind peer accepts fresh certs
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # one DNS label: it goes in a SAN

TOKEN_PREFIX = "WRNTKN"
TOKEN_VERSION = "1"
TOKEN_SECRET_LENGTH = 26  # 26 base36 chars ~ 134 bits
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
_SECRET_RE = re.compile(rf"^[a-z0-9]{{{TOKEN_SECRET_LENGTH},}}$")
_TOKEN_SHAPE = f"{TOKEN_PREFIX}-{TOKEN_VERSION}-<ca-hash>-<secret>"


class TokenError(PkiError):
    """A join token is malformed. The message never repeats the token (it holds a secret)."""


# --------------------------------------------------------------------------------------------
# keys and CSRs (node side)


def generate_key() -> bytes:
    """A fresh ECDSA P-256 private key as unencrypted PKCS#8 PEM (the node keeps it; only the CSR leaves)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key_pem: bytes) -> bytes:
    """A CSR proving possession of ``key_pem``; its subject is empty because the CA decides it."""
    key = _load_private_key(key_pem)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def key_matches_cert(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether ``key_pem`` is the private half of ``cert_pem`` (catches mixed-up credential files)."""
    cert = _load_cert(cert_pem)
    key = _load_private_key(key_pem)
    return _public_der(cert.public_key()) == _public_der(key.public_key())


# --------------------------------------------------------------------------------------------
# the CA (manager side)


class CertificateAuthority:
    """The cluster root CA. Immutable; safe to share between threads."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._cert = cert
        self._key = key
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self._key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        self._cluster_id = str(orgs[0].value) if orgs else ""

    @classmethod
    def create(cls, cluster_id: str) -> CertificateAuthority:
        """A new self-signed ECDSA P-256 root, valid ~10 years, for cluster ``cluster_id``."""
        if not cluster_id:
            raise PkiError("cluster id must not be empty")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, _CA_COMMON_NAME),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes | str, key_pem: bytes | str) -> CertificateAuthority:
        """Load a CA (e.g. from ClusterInfo, which stores PEM as str); refuses a non-CA or mismatched key."""
        cert = _load_cert(_as_bytes(cert_pem))
        key = _load_private_key(_as_bytes(key_pem))
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise PkiError("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise PkiError("the CA private key does not match the CA certificate")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def key_pem(self) -> bytes:
        return self._key_pem

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def fingerprint(self) -> str:
        """sha256 of the DER root cert, lowercase hex; the value pinned by join tokens."""
        return hashlib.sha256(self._cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def key_id(self) -> str:
        """Hex SubjectKeyIdentifier: what certificates it issues carry as AuthorityKeyIdentifier."""
        return ca_key_id(self._cert_pem)

    def issue(self, csr_pem: bytes, node_id: str, role: str, validity_days: float = 90) -> bytes:
        """Sign the CSR's public key as ``node_id``/``role``. The CSR's subject and extensions are
        ignored (the requester must not choose its own identity); its signature must be valid."""
        _check_node_id(node_id)
        _check_role(role)
        if validity_days <= 0:
            raise PkiError("certificate validity must be at least one day")
        try:
            csr = x509.load_pem_x509_csr(_as_bytes(csr_pem))
        except (ValueError, TypeError) as exc:
            raise PkiError("certificate signing request is not a valid PEM CSR") from exc
        try:
            valid_sig = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, TypeError) as exc:
            raise PkiError(f"certificate signing request is unusable: {exc}") from exc
        if not valid_sig:
            raise PkiError("certificate signing request signature is invalid")
        return self._sign(_check_public_key(public_key), node_id, role, validity_days)

    def issue_keypair(self, node_id: str, role: str, validity_days: float = 90) -> tuple[bytes, bytes]:
        """A fresh key and its cert, for certs the manager mints itself (its own, the admin's)."""
        key_pem = generate_key()
        return self.issue(make_csr(key_pem), node_id, role, validity_days), key_pem

    def _sign(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, node_id: str, role: str, validity_days: float
    ) -> bytes:
        now = _now()
        not_after = min(now + dt.timedelta(days=validity_days), self._cert.not_valid_after_utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _OU_PREFIX + role),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._cluster_id or "warren"),
            ]
        )
        sans: list[x509.GeneralName] = [x509.DNSName(node_id.lower())]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role == ROLE_MANAGER:
            sans.insert(0, x509.DNSName(MANAGER_TLS_NAME))
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------------------------
# identities (every RPC)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified certificate says its holder is."""

    node_id: str
    role: str
    cluster_id: str
    not_after: dt.datetime
    serial: int
    issuer_key_id: str = ""  # the issuing CA's key id (ca_key_id), "" if the cert does not say


@functools.lru_cache(maxsize=4096)
def identity_of(cert_pem: bytes) -> Identity:
    """Read the identity from a certificate. Does NOT check the signature: call it only on a cert
    the TLS handshake already verified (or after verify_issued_by). Cached: it runs on every RPC."""
    cert = _load_cert(cert_pem)
    node_id = _single_attr(cert, NameOID.COMMON_NAME, "CN")
    ou = _single_attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    cluster_id = _single_attr(cert, NameOID.ORGANIZATION_NAME, "O")
    role = ou.removeprefix(_OU_PREFIX)
    if not ou.startswith(_OU_PREFIX) or role not in ROLES:
        raise PkiError(f"certificate carries unknown role {ou!r}")
    return Identity(
        node_id=node_id,
        role=role,
        cluster_id=cluster_id,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        issuer_key_id=_authority_key_id(cert),
    )


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether ``cert_pem`` was signed by the CA, or by one of the CAs of a bundle (issuer name
    and signature), e.g. to check a cert handed back by a manager before trusting it. Validity
    dates are not checked here."""
    try:
        cert = x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    except ValueError:
        return False
    for ca in _load_bundle(ca_cert_pem):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


@functools.lru_cache(maxsize=64)
def ca_key_id(cert_pem: bytes | str) -> str:
    """The hex SubjectKeyIdentifier of a CA certificate (the first of a bundle), computed from
    its key when the extension is absent. Names a root in the CA rotation's bookkeeping."""
    cert = _load_cert(_as_bytes(cert_pem))
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def bundle(*cert_pems: bytes | str) -> bytes:
    """Several PEM certificates as one trust bundle, in order, skipping empty ones (the first
    is the current root: its fingerprint is the one join tokens pin)."""
    return b"".join(_as_bytes(p).strip() + b"\n" for p in cert_pems if p)


def bundle_key_ids(bundle_pem: bytes | str) -> set[str]:
    """The key ids of every CA in a bundle."""
    return {ca_key_id(c.public_bytes(serialization.Encoding.PEM)) for c in _load_bundle(bundle_pem)}


def validity(cert_pem: bytes | str) -> tuple[dt.datetime, dt.datetime]:
    """A certificate's (notBefore, notAfter), timezone-aware UTC: when to renew it."""
    cert = _load_cert(_as_bytes(cert_pem))
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def ca_fingerprint(cert_pem: bytes | str) -> str:
    """sha256 of a cert's DER, lowercase hex: what a joining node compares with its token."""
    cert = _load_cert(_as_bytes(cert_pem))
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --------------------------------------------------------------------------------------------
# join tokens


@dataclass(frozen=True, slots=True)
class JoinToken:
    fingerprint: str
    secret: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"JoinToken(fingerprint={self.fingerprint!r}, secret=<redacted>)"


def new_token_secret() -> str:
    """A fresh random token secret (stored in ClusterInfo, rotated by RotateJoinToken)."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_SECRET_LENGTH))


def make_join_token(fingerprint: str, secret: str) -> str:
    """Assemble ``WRNTKN-1-<ca sha256 hex>-<secret>``."""
    if not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise TokenError("CA fingerprint must be 64 lowercase hex characters (sha256)")
    if not _SECRET_RE.fullmatch(secret):
        raise TokenError(f"token secret must be at least {TOKEN_SECRET_LENGTH} characters of [a-z0-9]")
    return f"{TOKEN_PREFIX}-{TOKEN_VERSION}-{fingerprint}-{secret}"


def parse_join_token(token: str) -> JoinToken:
    """Split a token typed by an operator; surrounding whitespace is forgiven, nothing else is."""
    parts = token.strip().split("-")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise TokenError(f"join token is malformed: expected {_TOKEN_SHAPE}")
    _, version, fingerprint, secret = parts
    if version != TOKEN_VERSION:
        raise TokenError(f"join token is malformed: unsupported version {version!r}, expected {_TOKEN_SHAPE}")
    fingerprint = fingerprint.lower()
    if not _FINGERPRINT_RE.fullmatch(fingerprint):
        raise TokenError(f"join token is malformed: the CA hash must be 64 hex characters; expected {_TOKEN_SHAPE}")
    if not _SECRET_RE.fullmatch(secret):
        raise TokenError(
            f"join token is malformed: the secret must be at least {TOKEN_SECRET_LENGTH} characters of [a-z0-9];"
            f" expected {_TOKEN_SHAPE}"
        )
    return JoinToken(fingerprint=fingerprint, secret=secret)


def join_proof(token_secret: str, csr_pem: bytes | str) -> str:
    """What a joining node sends instead of its token's secret: hex HMAC-SHA256 of the CSR keyed
    by the secret. It binds the secret to this CSR, so a recorded proof is no use for any other
    key, and the secret never crosses the (plaintext) join channel."""
    return hmac.new(token_secret.encode(), _as_bytes(csr_pem), hashlib.sha256).hexdigest()


def proof_matches(expected_secret: str, csr_pem: bytes | str, proof: str) -> bool:
    """Constant-time check of a join proof; an unset (empty) expected secret never matches."""
    if not expected_secret:
        return False
    expected = join_proof(expected_secret, csr_pem)
    return hmac.compare_digest(expected.encode(), proof.encode("ascii", "replace"))


def token_matches(token_secret: str, expected_secret: str) -> bool:
    """Constant-time secret comparison; an unset (empty) expected secret never matches."""
    if not expected_secret:
        return False
    return hmac.compare_digest(token_secret.encode(), expected_secret.encode())


# --------------------------------------------------------------------------------------------
# helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _load_cert(cert_pem: bytes | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    except (ValueError, TypeError) as exc:
        raise PkiError("not a valid PEM certificate") from exc


def _load_bundle(bundle_pem: bytes | str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(_as_bytes(bundle_pem))
    except (ValueError, TypeError) as exc:
        raise PkiError("not a valid PEM certificate bundle") from exc


def _authority_key_id(cert: x509.Certificate) -> str:
    try:
        digest = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return ""
    return digest.hex() if digest else ""


def _load_private_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(_as_bytes(key_pem), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError("not a valid unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported private key type {type(key).__name__}; use ECDSA or RSA")
    return key


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_public_key(public_key: object) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Only keys every TLS stack here handles: ECDSA P-256/P-384, RSA >= 2048."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise PkiError(f"unsupported EC curve {public_key.curve.name}; use P-256 or P-384")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise PkiError("RSA keys must be at least 2048 bits")
    else:
        raise PkiError(f"unsupported public key type {type(public_key).__name__}; use ECDSA or RSA")
    return public_key


def _check_node_id(node_id: str) -> None:
    if not _NODE_ID_RE.fullmatch(node_id):
        raise PkiError(f"node id {node_id!r} is not usable in a certificate: it must be 1-63 of [A-Za-z0-9-]")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}")


def _single_attr(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if len(attrs) != 1 or not attrs[0].value:
        raise PkiError(f"certificate subject must carry exactly one {label}")
    return str(attrs[0].value)
