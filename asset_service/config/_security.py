"""Security settings: TLS, mTLS, bearer tokens and their roles, reflection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asset_service.options import BOOL, FILE, choice, setting


@dataclass(frozen=True)
class SecuritySettings:
    """The "security" group: TLS, mTLS, tokens, reflection, --insecure."""

    tls_cert: Path | None = setting(
        FILE,
        "",
        "PEM certificate chain of the server; with --tls-key serves TLS only",
        group="security",
    )
    tls_key: Path | None = setting(
        FILE, "", "PEM private key (unencrypted) of --tls-cert", group="security"
    )
    tls_client_ca: Path | None = setting(
        FILE,
        "",
        "PEM CA certificate(s): clients must present a certificate it signed (mTLS); "
        "certificate CNs map to roles in --tokens-file",
        group="security",
    )
    tokens_file: Path | None = setting(
        FILE,
        "",
        "TOML file of [[tokens]] (principal, roles, sha256 of the token) and [[certificates]] "
        "(common_name, principal, roles); makes credentials required (`asset-service token "
        "new` makes an entry). Without it (and --tls-client-ca) there is no authentication",
        group="security",
    )
    token_secret_file: Path | None = setting(
        FILE,
        "",
        "secret(s) signing task-scoped tokens (MintTaskToken), one per line, at least 32 bytes "
        "each; the first signs, all verify. Without it MintTaskToken answers "
        "FAILED_PRECONDITION",
        group="security",
    )
    reflection: str = setting(
        choice("authenticated", "open", "off"),
        "authenticated",
        "server reflection, grpc.reflection.v1 and v1alpha (grpcurl, buf curl and grpcui "
        "without .proto files, comments included): 'authenticated' needs the reader role once "
        "credentials are required, 'open' needs nothing, 'off' removes both",
        group="security",
    )
    insecure: bool = setting(
        BOOL,
        "false",
        "allow listening on a non-loopback address without TLS and authentication (e.g. "
        "behind a TLS-terminating proxy on a private network)",
        group="security",
    )
