"""A token that is not a valid bearer token is refused by name, never echoed, and never sent.

Reported: a token pasted with curly quotes, or with an ``é``, passed the settings check; httpx then
failed to encode the ``Authorization`` header and the exception (``Bearer <token>`` in its repr or
text) reached stderr and Prefect's log table. Each bad shape below carries a canary; no error text,
repr or traceback may contain it, whether the token comes from the environment, is handed to the
client, or (belt and braces) slipped past every check into a client that then tries to send it.
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient
from sagas.digitalocean.simulator import RunningSimulator
from sagas.errors import ConfigurationError
from sagas.services import Services
from sagas.settings import MAX_TOKEN_LENGTH, Settings, TokenPurpose, check_token, load_settings
from tests.conftest import seed_droplet

CANARY = "c4nary" + uuid.uuid4().hex  # the part of every bad token that must never show up

BAD_TOKENS = {
    "curly-quotes": f"\u201cdop_v1_{CANARY}\u201d",
    "straight-double-quotes": f'"dop_v1_{CANARY}"',
    "single-quotes": f"'dop_v1_{CANARY}'",
    "e-acute": f"dop_v1_{CANARY}\u00e9",
    "non-breaking-space": f"dop_v1_\u00a0{CANARY}",
    "crlf-header-injection": f"dop_v1_{CANARY}\r\nX-Injected: yes",
    "trailing-newline": f"dop_v1_{CANARY}\n",
    "space": f"dop_v1_ {CANARY}",
    "tab": f"dop_v1_\t{CANARY}",
    "bearer-prefix-pasted-too": f"Bearer dop_v1_{CANARY}",
    "nul": f"dop_v1_\x00{CANARY}",
    "del": f"dop_v1_\x7f{CANARY}",
    "colon": f"dop:v1:{CANARY}",
    "4kb": f"dop_v1_{CANARY}" + "a" * 4096,
}
# The shapes httpx or h11 refuse to put in a header: the ones that used to leak through their errors.
UNSENDABLE = [
    "curly-quotes",
    "e-acute",
    "non-breaking-space",
    "crlf-header-injection",
    "trailing-newline",
    "nul",
]
TOKEN_VARIABLES = ["SAGAS_DO_TOKEN", "SAGAS_DO_TOKEN_PROVISIONING", "SAGAS_DO_TOKEN_READ"]
GOOD_TOKEN = "dop_v1_" + "0123456789abcdef" * 4


def texts_of(exc: BaseException) -> str:
    """Everything an exception could print: its text, its repr, its whole traceback with causes."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


def assert_no_canary(exc: BaseException) -> None:
    link: BaseException | None = exc
    while link is not None:
        assert CANARY not in texts_of(link)
        assert CANARY not in repr(link.args)
        link = link.__cause__ or link.__context__


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in [k for k in os.environ if k.startswith("SAGAS_")]:
        monkeypatch.delenv(key)
    yield monkeypatch


# --- the check itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [GOOD_TOKEN, "mF_9.B5f-4.1JqM", "abc/def+ghi~jkl==", "a" * MAX_TOKEN_LENGTH],
    ids=["digitalocean", "rfc6750-example", "b64-with-padding", "longest"],
)
def test_a_valid_bearer_token_is_accepted(token: str) -> None:
    assert check_token(token, "SAGAS_DO_TOKEN").get_secret_value() == token


@pytest.mark.parametrize("shape", sorted(BAD_TOKENS))
def test_check_token_refuses_a_bad_shape_naming_the_source_not_the_value(shape: str) -> None:
    with pytest.raises(ConfigurationError, match="SAGAS_DO_TOKEN_READ is not a usable") as caught:
        check_token(BAD_TOKENS[shape], "SAGAS_DO_TOKEN_READ")
    assert_no_canary(caught.value)


def test_a_token_one_character_too_long_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=f"longer than {MAX_TOKEN_LENGTH}"):
        check_token("a" * (MAX_TOKEN_LENGTH + 1), "SAGAS_DO_TOKEN")


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ("curly-quotes", "quote marks"),
        ("e-acute", "non-ASCII"),
        ("trailing-newline", "line breaks"),
        ("nul", "control characters"),
        ("colon", "characters a bearer token cannot have"),
        ("4kb", "longer than"),
    ],
)
def test_the_refusal_says_what_to_fix(shape: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        check_token(BAD_TOKENS[shape], "SAGAS_DO_TOKEN")


# --- from the environment -------------------------------------------------------------------------


@pytest.mark.parametrize("variable", TOKEN_VARIABLES)
@pytest.mark.parametrize("shape", sorted(set(BAD_TOKENS) - {"nul"}))  # no NUL fits in an environment
def test_a_bad_token_in_the_environment_is_refused_by_variable_name(
    clean_env: pytest.MonkeyPatch, variable: str, shape: str
) -> None:
    clean_env.setenv(variable, BAD_TOKENS[shape])
    with pytest.raises(
        ConfigurationError, match=f"{variable} is not a usable DigitalOcean API token"
    ) as caught:
        load_settings()
    assert_no_canary(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_only_the_bad_variable_is_named_and_the_good_ones_load(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SAGAS_DO_TOKEN", GOOD_TOKEN)
    clean_env.setenv("SAGAS_DO_TOKEN_READ", BAD_TOKENS["curly-quotes"])
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "SAGAS_DO_TOKEN_READ" in str(caught.value)
    assert "SAGAS_DO_TOKEN:" not in str(caught.value)
    clean_env.delenv("SAGAS_DO_TOKEN_READ")
    assert load_settings().do_token_for(TokenPurpose.READ).get_secret_value() == GOOD_TOKEN


def test_an_empty_token_variable_still_means_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SAGAS_DO_TOKEN", "")
    settings = load_settings()
    with pytest.raises(ConfigurationError, match="set SAGAS_DO_TOKEN_PROVISIONING or SAGAS_DO_TOKEN"):
        settings.do_token_for(TokenPurpose.PROVISIONING)


@pytest.mark.parametrize("shape", ["curly-quotes", "e-acute", "crlf-header-injection"])
def test_settings_built_directly_do_not_quote_the_token_in_their_validation_error(shape: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(do_token=SecretStr(BAD_TOKENS[shape]))
    assert "SAGAS_DO_TOKEN is not a usable" in str(caught.value)
    assert_no_canary(caught.value)


# --- handed to the client -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(BAD_TOKENS))
def test_the_client_refuses_a_bad_token_without_quoting_it(shape: str) -> None:
    with httpx.Client(base_url="http://127.0.0.1:9") as http, pytest.raises(ConfigurationError) as caught:
        DigitalOceanClient(http, SecretStr(BAD_TOKENS[shape]))
    assert "token given to the client is not a usable" in str(caught.value)
    assert_no_canary(caught.value)


@pytest.mark.parametrize("shape", UNSENDABLE)
def test_a_bad_token_from_a_token_source_is_refused_when_its_client_is_built(
    clean_env: pytest.MonkeyPatch, shape: str
) -> None:
    # A token source (a Prefect Secret block) hands the services a token the environment never saw.
    settings = load_settings(do_api_url="http://127.0.0.1:9")
    services = Services(settings, token_source=lambda purpose: SecretStr(BAD_TOKENS[shape]))
    try:
        with pytest.raises(ConfigurationError) as caught:
            services.digitalocean(TokenPurpose.PROVISIONING)
    finally:
        services.close()
    assert_no_canary(caught.value)


# --- belt and braces: a bad token that slipped past every check ---------------------------------


@pytest.mark.parametrize("shape", UNSENDABLE)
def test_a_client_whose_token_cannot_be_sent_fails_cleanly_and_sends_nothing(
    simulator: RunningSimulator, sim: httpx.Client, caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    caplog.set_level(logging.DEBUG)
    droplet_id = seed_droplet(sim)
    http = httpx.Client(base_url=simulator.base_url, timeout=5)
    do = DigitalOceanClient(http, SecretStr(GOOD_TOKEN), retry=DEFAULT_RETRY.replace(sleep=lambda s: None))
    # No public path builds a client with such a token (the constructor refuses it); this stands
    # for one that gets there anyway, to prove the transport edge cannot leak it either.
    do._transport._token = SecretStr(BAD_TOKENS[shape])
    calls = [lambda: do.get_droplet(droplet_id), lambda: do.delete_droplet(droplet_id)]
    try:
        for call in calls:
            with pytest.raises(ConfigurationError, match="was not sent") as caught:
                call()
            assert_no_canary(caught.value)
            assert caught.value.__cause__ is None and caught.value.__context__ is None
    finally:
        http.close()

    requests = sim.get("/_sim/state").json()["counters"]["requests"]
    assert requests.get("GET /v2/droplets/{droplet_id}", 0) == 0
    assert requests.get("DELETE /v2/droplets/{droplet_id}", 0) == 0
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert CANARY not in logged
