"""An offline Sigstore stack for local releases and tests: Fulcio-, Rekor (v1)- and
TSA-like services on loopback.

Never shipped, never trusted by a production appliance (its root is local). The
unmodified ``sigstore`` client signs keylessly against it
(``sigstore --trust-config trust_config.json sign --identity-token ...``) and the bundles it
produces verify offline against ``trusted_root.json`` alone. Per stack, fresh ECDSA P-256 keys
for the CA, the CT log, the transparency log and the OIDC issuer; the TSA is ``openssl ts``.

For CI and the Justfile (build/with-sigstore.sh):
``python -m slm_policy.sigstore_stack serve --dir DIR`` writes
DIR/{trust_config.json,trusted_root.json,token,url}, prints "ready" and serves until
SIGTERM/SIGINT. Its keys derive from DIR/seed (made once), so every run has the same trust
root and what an earlier run signed keeps verifying.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

OPERATOR = "service-slm.test"
LOG_NAME = "rekor.service-slm.test"
AUDIENCE = "sigstore"  # the client's default OIDC client id, checked as `aud`
MAX_BODY = 1 << 20
P256_SHA256 = "PKIX_ECDSA_P256_SHA_256"
OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")  # raw issuer bytes (legacy)
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # DER UTF8String
OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
PrivateKey = ec.EllipticCurvePrivateKey
Response = tuple[int, str, bytes]
KeyMaker = Callable[[str], PrivateKey]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# a seeded stack's certificates start here, so they are the same in every run
SEEDED_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def key_maker(seed: bytes | None) -> KeyMaker:
    """Fresh keys, or (with a seed) keys derived from it per purpose: the same in every run,
    so what one run of ``serve --dir`` signed still verifies against the next run's root."""
    if seed is None:
        return lambda purpose: ec.generate_private_key(ec.SECP256R1())

    def derive(purpose: str) -> PrivateKey:
        scalar = int.from_bytes(hashlib.sha256(seed + purpose.encode()).digest(), "big")
        return ec.derive_private_key(scalar % (P256_ORDER - 1) + 1, ec.SECP256R1())

    return derive


class HTTPError(Exception):
    """An error answered as ``{"code": status, "message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- encoding helpers -------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _canonical(obj: Any) -> bytes:
    """RFC 8785 JSON for our ASCII-string/int-only objects."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key: PrivateKey) -> bytes:
    """RFC 6962 key ID: SHA-256 of the DER SubjectPublicKeyInfo (also Sigstore's log ID)."""
    return hashlib.sha256(_spki(key)).digest()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp name in the same directory, then rename: never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# --- certificates -----------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, OPERATOR),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, sign: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _ca_cert(key: PrivateKey, cn: str, start: dt.datetime) -> x509.Certificate:
    """A self-signed root CA valid for ten years from `start`."""
    pub = key.public_key()
    return (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn)).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .sign(key, hashes.SHA256()))


def _issue(ca_key: PrivateKey, ca: x509.Certificate, pub: Any, subject: x509.Name,
           validity: tuple[dt.datetime, dt.datetime], serial: int,
           extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """An end-entity certificate signed by `ca`, extensions in the given order."""
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(ca.subject).public_key(pub)
               .serial_number(serial).not_valid_before(validity[0]).not_valid_after(validity[1])
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(ca_key, hashes.SHA256())


def _fulcio_extensions(identity: str, issuer: str) -> list[tuple[x509.ExtensionType, bool]]:
    """Fulcio's code-signing profile: the identity as SAN, the OIDC issuer in two forms."""
    san: x509.GeneralName = (x509.RFC822Name(identity) if "@" in identity
                             else x509.UniformResourceIdentifier(identity))
    return [
        (_key_usage(sign=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
        (x509.SubjectAlternativeName([san]), True),  # critical: the subject is empty
        (x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()), False),
        (x509.UnrecognizedExtension(OID_ISSUER_V2, _der(0x0C, issuer.encode())), False),
    ]


def _sct_extension(ct_key: PrivateKey, issuer_key_id: bytes, tbs: bytes) -> bytes:
    """The DER value of an SCT-list extension holding one precertificate SCT over `tbs`.

    RFC 6962 §3.2: the CT log signs (version, type, timestamp, precert_entry, issuer key
    hash, TBS without the SCT extension, no extensions).
    """
    ts_ms = int(time.time() * 1000)
    signed = (struct.pack("!BBQH", 0, 0, ts_ms, 1) + issuer_key_id
              + len(tbs).to_bytes(3, "big") + tbs + struct.pack("!H", 0))
    sig = _sign(ct_key, signed)
    sct = (struct.pack("!B32sQH", 0, _key_id(ct_key), ts_ms, 0)
           + struct.pack("!BBH", 4, 3, len(sig)) + sig)  # sha256, ecdsa
    serialized = struct.pack("!H", len(sct)) + sct
    return _der(0x04, struct.pack("!H", len(serialized)) + serialized)


# --- RFC 6962 Merkle tree ---------------------------------------------------------------

def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + _root(leaves[:k]) + _root(leaves[k:])).digest()


def _path(index: int, leaves: list[bytes]) -> list[bytes]:
    """The audit path of leaf `index`, lowest level first."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return _path(index, leaves[:k]) + [_root(leaves[k:])]
    return _path(index - k, leaves[k:]) + [_root(leaves[:k])]


# --- services ---------------------------------------------------------------------------

class _Fulcio:
    """Checks OIDC tokens against the stack's issuer key, issues leaf certs with an SCT."""

    def __init__(self, start: dt.datetime, oidc_key: PrivateKey, keys: KeyMaker) -> None:
        self.key = keys("fulcio")
        self.ct_key = keys("ct-log")
        self.cert = _ca_cert(self.key, "service-slm-test-fulcio", start)
        self._oidc_public = oidc_key.public_key()

    def handle(self, headers: Any, body: bytes) -> Response:
        """POST /api/v2/signingCert with a PEM CSR and a bearer token."""
        claims = self._claims(headers.get("Authorization", ""))
        try:
            csr_pem = base64.b64decode(json.loads(body)["certificateSigningRequest"])
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPError(400, f"malformed certificate signing request: {exc}") from exc
        if not csr.is_signature_valid:
            raise HTTPError(400, "CSR signature invalid: no proof of key possession")
        cert = self.issue(csr.public_key(), claims.get("email") or claims["sub"], claims["iss"])
        chain = {"certificates": [_pem(cert), _pem(self.cert)]}
        return 201, "application/json", json.dumps(
            {"signedCertificateEmbeddedSct": {"chain": chain}}).encode()

    def _claims(self, authorization: str) -> dict[str, Any]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPError(401, "missing bearer identity token")
        try:
            return jwt.decode(token, self._oidc_public, algorithms=["ES256"], audience=AUDIENCE,
                              options={"require": ["iss", "sub", "aud", "iat", "exp"]})
        except jwt.PyJWTError as exc:
            raise HTTPError(401, f"invalid identity token: {exc}") from exc

    def issue(self, pub: Any, identity: str, issuer: str) -> x509.Certificate:
        """A 10-minute code-signing cert whose embedded SCT covers its own precert TBS."""
        start = _now()
        validity, serial = (start, start + dt.timedelta(minutes=10)), x509.random_serial_number()
        exts = _fulcio_extensions(identity, issuer)
        pre = _issue(self.key, self.cert, pub, x509.Name([]), validity, serial, exts)
        sct = _sct_extension(self.ct_key, _key_id(self.key), pre.tbs_certificate_bytes)
        exts.append((x509.UnrecognizedExtension(OID_SCT_LIST, sct), False))
        cert = _issue(self.key, self.cert, pub, x509.Name([]), validity, serial, exts)
        if cert.tbs_precertificate_bytes != pre.tbs_certificate_bytes:
            raise HTTPError(500, "precertificate TBS mismatch")
        return cert


def _ecdsa_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The certificate's key; only ECDSA keys verify here (TypeError, a malformed entry, as
    verifying with ECDSA would raise for any other key)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError(f"not an ECDSA key: {type(key).__name__}")
    return key


def _hashedrekord_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a hashedrekord 0.0.1 proposal (signature over the digest) and normalise it."""
    sig_b64 = spec["signature"]["content"]
    cert_b64 = spec["signature"]["publicKey"]["content"]
    algorithm, value = spec["data"]["hash"]["algorithm"], spec["data"]["hash"]["value"]
    if algorithm not in HASHES:
        raise HTTPError(400, f"unsupported hash algorithm {algorithm!r}")
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_b64))
    try:
        _ecdsa_key(cert).verify(
            base64.b64decode(sig_b64), bytes.fromhex(value), ec.ECDSA(Prehashed(HASHES[algorithm])))
    except InvalidSignature as exc:
        raise HTTPError(400, "signature does not verify against the artifact digest") from exc
    return {"data": {"hash": {"algorithm": algorithm, "value": value}},
            "signature": {"content": sig_b64, "publicKey": {"content": cert_b64}}}


def _pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _dsse_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Validate a dsse 0.0.1 proposal (PAE signatures) and turn it into Rekor's canonical form."""
    proposed = spec["proposedContent"]
    raw_envelope, verifiers = proposed["envelope"], proposed["verifiers"]
    envelope = json.loads(raw_envelope)
    payload = base64.b64decode(envelope["payload"])
    pae = _pae(envelope["payloadType"], payload)
    signatures = []
    for entry in envelope["signatures"]:
        sig = base64.b64decode(entry["sig"])
        for verifier in verifiers:
            key = _ecdsa_key(x509.load_pem_x509_certificate(base64.b64decode(verifier)))
            try:
                key.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            signatures.append({"signature": entry["sig"], "verifier": verifier})
            break
        else:
            raise HTTPError(400, "DSSE signature does not verify against any verifier")
    return {"envelopeHash": {"algorithm": "sha256",
                             "value": hashlib.sha256(raw_envelope.encode()).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": sorted(signatures, key=lambda s: s["signature"])}


class _Rekor:
    """An append-only Rekor v1 log: inclusion proofs, signed checkpoints and SETs."""

    def __init__(self, keys: KeyMaker) -> None:
        self.key = keys("rekor")
        self.log_id = _key_id(self.key)
        self.tree_id = int.from_bytes(os.urandom(7), "big")
        self._leaves: list[bytes] = []
        self._lock = threading.Lock()

    def handle_post(self, headers: Any, body: bytes) -> Response:
        """POST /api/v1/log/entries: integrate a hashedrekord or dsse 0.0.1 entry."""
        try:
            canonical = self._canonical_body(json.loads(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPError(400, f"malformed log entry: {exc!r}") from exc
        return 201, "application/json", json.dumps(self._integrate(canonical)).encode()

    def handle_get(self, headers: Any, body: bytes) -> Response:
        """GET /api/v1/log: the current signed tree head."""
        with self._lock:
            size, root = len(self._leaves), _root(self._leaves)
        info = {"rootHash": root.hex(), "treeSize": size, "signedTreeHead":
                self._checkpoint(size, root), "treeID": str(self.tree_id)}
        return 200, "application/json", json.dumps(info).encode()

    @staticmethod
    def _canonical_body(entry: dict[str, Any]) -> bytes:
        kind, version = entry.get("kind"), entry.get("apiVersion")
        if (kind, version) == ("hashedrekord", "0.0.1"):
            spec = _hashedrekord_spec(entry["spec"])
        elif (kind, version) == ("dsse", "0.0.1"):
            spec = _dsse_spec(entry["spec"])
        else:
            raise HTTPError(400, f"unsupported entry type {kind!r} {version!r}")
        return _canonical({"apiVersion": version, "kind": kind, "spec": spec})

    def _integrate(self, body: bytes) -> dict[str, Any]:
        with self._lock:
            index = len(self._leaves)
            self._leaves.append(_leaf_hash(body))
            size, root, path = index + 1, _root(self._leaves), _path(index, self._leaves)
        integrated = int(time.time())
        promise = {"body": _b64(body), "integratedTime": integrated,
                   "logID": self.log_id.hex(), "logIndex": index}
        proof = {"checkpoint": self._checkpoint(size, root), "hashes": [h.hex() for h in path],
                 "logIndex": index, "rootHash": root.hex(), "treeSize": size}
        entry = {**promise, "verification": {
            "inclusionProof": proof,
            "signedEntryTimestamp": _b64(_sign(self.key, _canonical(promise)))}}
        return {_leaf_hash(body).hex(): entry}

    def _checkpoint(self, size: int, root: bytes) -> str:
        """A signed note; the signature's key hint is the first 4 bytes of the log ID."""
        note = f"{LOG_NAME} - {self.tree_id}\n{size}\n{_b64(root)}\n"
        sig = _b64(self.log_id[:4] + _sign(self.key, note.encode()))
        return f"{note}\n\u2014 {LOG_NAME} {sig}\n"


def _tsr_status(response: bytes) -> int:
    """PKIStatus of a DER TimeStampResp: SEQUENCE { SEQUENCE { INTEGER status ... } ... }."""
    def content(offset: int) -> int:
        first = response[offset + 1]
        return offset + 2 + (first & 0x7F if first & 0x80 else 0)

    try:
        status = content(content(0))
        return response[status + 2] if response[status] == 0x02 else -1
    except IndexError:
        return -1


class _TSA:
    """RFC 3161 timestamps from `openssl ts -reply` with a TSA cert chained to its own root."""

    def __init__(self, start: dt.datetime, directory: Path, keys: KeyMaker) -> None:
        self.dir = directory
        root_key = keys("tsa-root")
        self._key = keys("tsa")
        self.root = _ca_cert(root_key, "service-slm-test-tsa-root", start)
        self.cert = _issue(
            root_key, self.root, self._key.public_key(), _name("service-slm-test-tsa"),
            (start, start + dt.timedelta(days=3650)), x509.random_serial_number(),
            [(x509.BasicConstraints(ca=False, path_length=None), True),
             (_key_usage(sign=True), True),
             (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True)])
        self._lock = threading.Lock()

    def write_config(self) -> None:
        """Key, cert and openssl config; no `certs =` line (an unsorted SET OF breaks clients)."""
        if shutil.which("openssl") is None:
            raise RuntimeError("the stack's TSA needs the openssl binary (or use tsa=False)")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.dir / "tsa.key", self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_atomic(self.dir / "tsa.pem", _pem(self.cert))
        _write_atomic(self.dir / "serial", "01\n")
        _write_atomic(self.dir / "openssl.cnf", "\n".join([
            "[ tsa ]", "default_tsa = tsa_config", "[ tsa_config ]",
            f"serial = {self.dir / 'serial'}", f"signer_cert = {self.dir / 'tsa.pem'}",
            f"signer_key = {self.dir / 'tsa.key'}", "signer_digest = sha256",
            "default_policy = 1.3.6.1.4.1.57264.2", "digests = sha256, sha384, sha512",
            "accuracy = secs:1", "ordering = yes", "tsa_name = yes",
            "ess_cert_id_chain = no", "ess_cert_id_alg = sha256", ""]))

    def handle(self, headers: Any, body: bytes) -> Response:
        """POST /api/v1/timestamp with an application/timestamp-query body."""
        with self._lock:
            query, reply = self.dir / "query.tsq", self.dir / "reply.tsr"
            query.write_bytes(body)
            reply.unlink(missing_ok=True)
            proc = subprocess.run(
                ["openssl", "ts", "-reply", "-config", str(self.dir / "openssl.cnf"),
                 "-queryfile", str(query), "-out", str(reply)],
                capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0 or not reply.exists():
                raise HTTPError(400, f"openssl ts -reply failed: {proc.stderr.strip()[-500:]}")
            response = reply.read_bytes()
        if _tsr_status(response) not in (0, 1):  # granted, grantedWithMods
            raise HTTPError(400, "timestamp request rejected (malformed query?)")
        return 200, "application/timestamp-reply", response


# --- HTTP -------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    routes: dict[tuple[str, str], Callable[[Any, bytes], Response]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read errors from the JSON bodies."""

    def _dispatch(self, method: str) -> None:
        try:
            route = self.server.routes.get((method, self.path.split("?", 1)[0]))
            if route is None:
                raise HTTPError(404, f"no such endpoint: {method} {self.path}")
            status, ctype, payload = route(self.headers, self._body())
        except HTTPError as exc:
            status, ctype = exc.status, "application/json"
            payload = json.dumps({"code": exc.status, "message": exc.message}).encode()
        except Exception as exc:  # a bug in the stack: say so instead of dropping the connection
            status, ctype = 500, "application/json"
            payload = json.dumps({"code": 500, "message": f"stack error: {exc!r}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""


# --- the stack --------------------------------------------------------------------------

class SigstoreStack:
    """Fulcio-, Rekor- and TSA-like services on one loopback HTTP server (thread)."""

    def __init__(self, workdir: Path, *, tsa: bool = True, seed: bytes | None = None) -> None:
        self.workdir = Path(workdir).absolute()  # openssl.cnf holds absolute paths
        self.trust_config_path = self.workdir / "trust_config.json"
        self.trusted_root_path = self.workdir / "trusted_root.json"
        self.issuer = "https://oidc.service-slm.test"
        self.identity = "release@service-slm.test"
        self.url = ""
        keys = key_maker(seed)
        self._start = SEEDED_START if seed else _now() - dt.timedelta(hours=1)
        self._oidc_key = keys("oidc")
        self._fulcio = _Fulcio(self._start, self._oidc_key, keys)
        self._rekor = _Rekor(keys)
        self._tsa = _TSA(self._start, self.workdir / "tsa", keys) if tsa else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SigstoreStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._tsa is not None:
            self._tsa.write_config()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.routes = self._routes()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        _write_atomic(self.trusted_root_path, json.dumps(self.trusted_root(), indent=2))
        _write_atomic(self.trust_config_path, json.dumps(self.trust_config(), indent=2))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="sigstore-stack")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def _routes(self) -> dict[tuple[str, str], Callable[[Any, bytes], Response]]:
        routes: dict[tuple[str, str], Callable[[Any, bytes], Response]] = {
            ("POST", "/api/v2/signingCert"): self._fulcio.handle,
            ("POST", "/api/v1/log/entries"): self._rekor.handle_post,
            ("GET", "/api/v1/log"): self._rekor.handle_get}
        if self._tsa is not None:
            routes["POST", "/api/v1/timestamp"] = self._tsa.handle
        return routes

    def token(self, identity: str | None = None, issuer: str | None = None, *,
              lifetime_s: int = 600) -> str:
        """An OIDC id token (JWT, ES256) signed by the stack's OIDC key; with lifetime_s<0 it is
        already expired."""
        identity = identity or self.identity
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer, "sub": identity, "aud": AUDIENCE,
            "iat": now if lifetime_s > 0 else now + lifetime_s - 60, "exp": now + lifetime_s}
        if "@" in identity:
            claims |= {"email": identity, "email_verified": True}
        return jwt.encode(claims, self._oidc_key, algorithm="ES256", headers={"kid": "stack"})

    def trusted_root(self) -> dict[str, Any]:
        """The trusted root (media type 0.1): CA, Rekor, CT log and (optionally) TSA."""
        start = {"start": _rfc3339(self._start)}

        def log(url: str, key: PrivateKey) -> dict[str, Any]:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key)), "keyDetails": P256_SHA256,
                                  "validFor": start},
                    "logId": {"keyId": _b64(_key_id(key))}}

        def authority(url: str, chain: list[x509.Certificate], cn: str) -> dict[str, Any]:
            certs = [{"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                     for c in chain]
            return {"subject": {"organization": OPERATOR, "commonName": cn}, "uri": url,
                    "certChain": {"certificates": certs}, "validFor": start}

        tsas = [] if self._tsa is None else [authority(
            f"{self.url}/api/v1/timestamp", [self._tsa.cert, self._tsa.root], "service-slm-tsa")]
        return {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [log(self.url, self._rekor.key)],
                "certificateAuthorities": [authority(self.url, [self._fulcio.cert], "fulcio")],
                "ctlogs": [log(f"{self.url}/ct", self._fulcio.ct_key)],
                "timestampAuthorities": tsas}

    def trust_config(self) -> dict[str, Any]:
        """The ClientTrustConfig: trusted root plus a signing config using Rekor v1 only."""
        def service(url: str) -> dict[str, Any]:
            return {"url": url, "majorApiVersion": 1, "operator": OPERATOR,
                    "validFor": {"start": _rfc3339(self._start)}}

        signing = {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                   "caUrls": [service(self.url)], "oidcUrls": [],
                   "rekorTlogUrls": [service(self.url)], "rekorTlogConfig": {"selector": "ANY"},
                   "tsaUrls": [service(f"{self.url}/api/v1/timestamp")] if self._tsa else [],
                   "tsaConfig": {"selector": "ANY"}}
        return {"mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
                "trustedRoot": self.trusted_root(), "signingConfig": signing}


def _serve(directory: Path, tsa: bool) -> int:
    """Run the stack until SIGTERM/SIGINT; the files appear complete or not at all."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    directory.mkdir(parents=True, exist_ok=True)
    seed_file = directory / "seed"
    if not seed_file.exists():
        _write_atomic(seed_file, os.urandom(32))
    with SigstoreStack(directory, tsa=tsa, seed=seed_file.read_bytes()) as stack:
        _write_atomic(directory / "token", stack.token(lifetime_s=3600))
        _write_atomic(directory / "url", stack.url)
        print("ready", flush=True)
        stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the stack on 127.0.0.1 until SIGTERM/SIGINT")
    serve.add_argument("--dir", type=Path, required=True, help="where to write the files")
    serve.add_argument("--no-tsa", action="store_true", help="no RFC 3161 timestamp authority")
    args = parser.parse_args(argv)
    return _serve(args.dir, tsa=not args.no_tsa)


if __name__ == "__main__":
    raise SystemExit(main())
