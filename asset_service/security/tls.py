"""Server TLS credentials whose files are re-read when they change, without dropping connections."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from asset_service import logs
from asset_service.domain.errors import InvalidArgument

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class _Loaded:
    stamp: _Stamp
    config: grpc.ServerCertificateConfiguration
    subject: str


class ReloadingCertificates:
    """--tls-cert/--tls-key (and --tls-client-ca) served through dynamic credentials.

    grpc calls the fetcher before every TLS handshake, from one of its own threads; it
    answers a new configuration only when a file changed (size, mtime or inode), so a cert
    rotated on disk (or a SIGHUP) applies to the next connection while open connections
    keep theirs. A half-written rotation (a key that does not match the certificate) is
    refused and the previous pair kept.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._current = self._load()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @property
    def subject(self) -> str:
        return self._current.subject

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._current.config,
            self._fetch,  # type: ignore[arg-type]  # None means "no change" (grpc's docs)
            require_client_authentication=self.client_ca is not None,
        )

    def reload(self) -> bool:
        """Re-read the files now if they changed (SIGHUP); raises InvalidArgument if bad."""
        with self._lock:
            return self._refresh()

    def _stamp(self) -> _Stamp:
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _refresh(self) -> bool:
        try:
            stamp = self._stamp()
        except OSError as exc:
            raise InvalidArgument(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        if stamp == self._current.stamp:
            return False
        self._current = self._load()
        self._pending = self._current.config
        log.info("TLS certificate reloaded (%s)", self._current.subject)
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # grpc's thread, before a handshake: never raise (the handshake would fail).
        try:
            with self._lock:
                self._refresh()
                config, self._pending = self._pending, None
                return config
        except Exception as exc:  # keep serving with the previous certificate
            log.warning(
                "TLS files changed but cannot be used yet, keeping the previous certificate: %s",
                exc,
                extra={logs.RATE_KEY: "tls-reload"},
            )
            return None

    def _load(self) -> _Loaded:
        stamp = self._stamp_or_raise()
        cert_pem, key_pem = _read(self.cert, "--tls-cert"), _read(self.key, "--tls-key")
        ca_pem = _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
        subject = _check_pair(cert_pem, key_pem, self.cert, self.key)
        if ca_pem is not None:
            try:
                x509.load_pem_x509_certificates(ca_pem)
            except ValueError as exc:
                raise InvalidArgument(
                    f"--tls-client-ca {self.client_ca} holds no PEM certificate: {exc}"
                ) from None
        config = grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)
        return _Loaded(stamp, config, subject)

    def _stamp_or_raise(self) -> _Stamp:
        try:
            return self._stamp()
        except OSError as exc:
            raise InvalidArgument(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {flag} {path}: {exc.strerror}") from None


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> str:
    """The certificate's subject, once it parses and matches the private key."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise InvalidArgument(f"--tls-cert {cert_path} holds no PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            f"--tls-key {key_path} is not an unencrypted PEM private key: {exc}"
        ) from None
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if chain[0].public_key().public_bytes(enc, fmt) != key.public_key().public_bytes(enc, fmt):
        raise InvalidArgument(
            f"--tls-key {key_path} does not belong to the certificate in --tls-cert {cert_path}"
        )
    return chain[0].subject.rfc4514_string()
