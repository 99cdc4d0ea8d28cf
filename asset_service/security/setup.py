"""Security from settings: load the files, refuse unsafe listening, reload on SIGHUP."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterator

import grpc

from asset_service.config import Settings
from asset_service.domain.errors import AssetError, InvalidArgument
from asset_service.security.authn import Authenticator
from asset_service.security.task_tokens import TaskTokens, load_secrets
from asset_service.security.tls import ReloadingCertificates
from asset_service.security.tokens import TokenTable, load_tokens

log = logging.getLogger(__name__)

REFLECTION_MODES = ("authenticated", "open", "off")


def is_loopback(listen: str) -> bool:
    """Whether `listen` (HOST:PORT or unix:PATH) is reachable from this machine only."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or empty (every interface)


class Security:
    """The security of one server: certificates, tokens, task-token secrets (its interceptor:
    api/interceptor.py)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
        if (cert is None) != (key is None):
            raise InvalidArgument("--tls-cert and --tls-key go together: give both or neither")
        if ca is not None and cert is None:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS)")
        if ca is not None and settings.tokens_file is None:
            raise InvalidArgument(
                "--tls-client-ca without --tokens-file: a client certificate maps to roles only "
                "through a [[certificates]] entry of the tokens file, so every call would be "
                "refused; give --tokens-file (docs/security.md)"
            )
        if settings.reflection not in REFLECTION_MODES:
            raise InvalidArgument(
                f"--reflection {settings.reflection!r}: use one of {', '.join(REFLECTION_MODES)}"
            )
        self.certificates = (
            ReloadingCertificates(cert, key, ca) if cert is not None and key is not None else None
        )
        tokens = self._tokens()
        self.task_tokens = TaskTokens(self._secrets())
        self.authenticator = Authenticator(tokens, self.task_tokens, ca is not None)

    def _tokens(self) -> TokenTable | None:
        path = self.settings.tokens_file
        return load_tokens(path) if path is not None else None

    def _secrets(self) -> tuple[bytes, ...]:
        path = self.settings.token_secret_file
        return load_secrets(path) if path is not None else ()

    @property
    def authenticated(self) -> bool:
        return self.authenticator.required

    def check_listen(self) -> None:
        """Refuse a network-reachable address without TLS and authentication (unless told)."""
        listen = self.settings.listen
        if self.settings.insecure or is_loopback(listen):
            return
        missing = []
        if self.certificates is None:
            missing.append("TLS (--tls-cert and --tls-key)")
        if not self.authenticated:
            missing.append("authentication (--tokens-file, or --tls-client-ca)")
        if missing:
            raise InvalidArgument(
                f"refusing to listen on {listen}, an address other machines can reach, "
                f"without {' and '.join(missing)}: anyone reaching it could read, change and "
                "delete every asset. Configure them (docs/security.md), listen on "
                "127.0.0.1, or pass --insecure (ASSET_SERVICE_INSECURE=1) to accept the risk"
            )

    @property
    def anonymous(self) -> bool:
        """Nothing configured that could authenticate a caller, now or after a reload."""
        s = self.settings
        return s.tokens_file is None and s.tls_client_ca is None and s.token_secret_file is None

    def add_port(self, server: grpc.aio.Server) -> int:
        if self.certificates is None:
            return server.add_insecure_port(self.settings.listen)
        return server.add_secure_port(self.settings.listen, self.certificates.credentials())

    def describe(self, port: int) -> None:
        """The start-up log lines saying how callers are checked (`port`: the one bound)."""
        if not self.authenticated:
            host = self.settings.listen.rsplit(":", 1)[0]
            log.warning(
                "no authentication configured: every client that can reach %s:%d may read, "
                "change and delete every asset (give --tokens-file; docs/security.md)%s",
                host,
                port,
                "" if self.certificates else "; plaintext, no TLS",
            )
        tokens = self.authenticator.tokens
        log.info(
            "security: TLS %s, client certificates %s, %s bearer token(s), %s mapped "
            "certificate(s), task tokens %s, reflection %s",
            f"on ({self.certificates.subject})" if self.certificates else "off",
            "required" if self.authenticator.client_certificates else "not requested",
            len(tokens.tokens) if tokens else 0,
            len(tokens.certificates) if tokens else 0,
            "on" if self.task_tokens.secrets else "off (no --token-secret-file)",
            "off"
            if self.settings.reflection == "off"
            else (
                "open"
                if not self.authenticated or self.settings.reflection == "open"
                else "authenticated"
            ),
        )

    def reload(self) -> None:
        """SIGHUP: re-read every file; a file that fails keeps its previous contents in use."""
        if (
            self.settings.tokens_file is None
            and self.settings.token_secret_file is None
            and self.certificates is None
        ):
            log.info("SIGHUP: no tokens, token secret or TLS files to re-read")
        if self.settings.tokens_file is not None:
            with _keeping_previous("tokens"):
                self.authenticator.tokens = self._tokens()
                log.info("reloaded the tokens file %s", self.settings.tokens_file)
        if self.settings.token_secret_file is not None:
            with _keeping_previous("token secrets"):
                self.task_tokens.secrets = self._secrets()
                log.info("reloaded the token secret file %s", self.settings.token_secret_file)
        if self.certificates is not None:
            with _keeping_previous("TLS certificate"):
                if not self.certificates.reload():
                    log.info("TLS files unchanged")


@contextlib.contextmanager
def _keeping_previous(what: str) -> Iterator[None]:
    """A reload that fails (AssetError) leaves `what` as it was, and says so."""
    try:
        yield
    except AssetError as exc:
        log.error("kept the previous %s: %s", what, exc.message)
