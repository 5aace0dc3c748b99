"""The type of every input field, defined once: what saga inputs, flow parameters and the CLI accept.

Refused, never coerced. An id field takes an int, not a bool, a float or a numeric string
(``True``, ``7.0``, ``"7"``, ``" 7 "`` and ``"1_000"`` are all refused); a text field takes a str
with no control character in it and nothing is stripped; a saga id is a ``uuid.UUID`` or its
canonical 36-character text, never empty and never padded. Every model that takes one of these
fields (the registry's inputs, the flows' parameters, the fleet flow) uses the type from here, so
each rule is written once.

Each rule is also a JSON-schema keyword (``pattern``, ``exclusiveMinimum``, ``maxLength`` ...):
a Prefect deployment whose parameters are built from these types refuses a bad value at
submission (409) by the same rule the runner applies later. Patterns end in ``$(?!\\n)`` because
the server checks them with Python's ``re.search``, where a bare ``$`` also matches before a
final newline. Error messages name the rule and never quote the value (it could be a pasted token).

This module is part of the core: it must never import Prefect or anything above ``sagas``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Strict,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from sagas.errors import InputError

# Characters no input may carry: C0/C1 controls and DEL (Unicode Cc), unpaired surrogates (Cs;
# Postgres cannot store them), line and paragraph separators (Zl, Zp), and the invisible format
# characters that hide or reorder text on screen (zero-width, bidi controls, word joiners, BOM).
# Written as escapes, so the same text is a character class for Python and JavaScript alike.
CONTROL_CHARACTERS = (
    r"\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ud800-\udfff"
)
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")


def anchored(body: str) -> str:
    """``body`` as a whole-string pattern for a JSON schema (see the module docstring)."""
    return f"^(?:{body})$(?!\\n)"


@dataclass(frozen=True)
class Text:
    """A text rule: a strict str, no control character, matching ``body`` as a whole.

    Put it last in an ``Annotated[str, Strict(), ...]``; length bounds go in a ``Field`` before it.
    """

    body: str
    what: str  # the end of "must be ...", for people

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = anchored(self.body)
        return json_schema

    def check(self, value: str) -> str:
        refuse_control_characters(value)
        if re.fullmatch(self.body, value) is None:
            raise PydanticCustomError("text_format", "must be {what}", {"what": self.what})
        return value


def refuse_control_characters(value: str) -> None:
    found = _CONTROL.search(value)
    if found is not None:
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (U+{code} at position {position})",
            {"code": f"{ord(found.group()):04X}", "position": found.start()},
        )


# -- DigitalOcean ids and names ----------------------------------------------------------------

# JavaScript's safe integers: every id survives a JSON round trip through a browser unchanged.
MAX_ID = 2**53

DropletId = Annotated[
    int,
    Strict(),
    Field(gt=0, lt=MAX_ID, description="The DigitalOcean droplet id (a number).", examples=[3164444]),
]
SnapshotId = Annotated[
    int,
    Strict(),
    Field(gt=0, lt=MAX_ID, description="Id of the droplet snapshot (a number).", examples=[6372321]),
]

SLUG = r"[a-z0-9][a-z0-9-]{0,63}"
DROPLET_NAME = r"[a-zA-Z0-9]([a-zA-Z0-9.\-]{0,253}[a-zA-Z0-9])?"
SNAPSHOT_LABEL = r"[a-z0-9][a-z0-9-]{0,39}"
HOSTNAME = r"@|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
TAG = r"[a-zA-Z0-9_\-:]{1,255}"

# Common values, from DigitalOcean's API reference and `doctl compute region/size/image list`.
# Not closed sets (regions and sizes are added, an account may have custom images), so they are
# offered as examples, never enforced as choices.
COMMON_REGIONS = ("nyc1", "nyc3", "sfo3", "ams3", "fra1", "lon1", "sgp1", "tor1", "blr1", "syd1")
COMMON_SIZES = (
    "s-1vcpu-512mb-10gb",
    "s-1vcpu-1gb",
    "s-1vcpu-2gb",
    "s-2vcpu-2gb",
    "s-2vcpu-4gb",
    "s-4vcpu-8gb",
)
COMMON_IMAGES = ("ubuntu-24-04-x64", "ubuntu-22-04-x64", "debian-12-x64", "fedora-40-x64", "rockylinux-9-x64")

DropletName = Annotated[
    str,
    Strict(),
    Field(
        description="Droplet name (also its hostname): letters, digits, dots and dashes.", examples=["web-1"]
    ),
    Text(DROPLET_NAME, "a droplet name (letters, digits, dots and dashes, e.g. web-1)"),
]
RegionSlug = Annotated[
    str,
    Strict(),
    Field(
        description="Region slug, e.g. nyc3. Common: " + ", ".join(COMMON_REGIONS) + ".",
        examples=list(COMMON_REGIONS),
    ),
    Text(SLUG, "a region slug (lowercase letters, digits and dashes, e.g. nyc3)"),
]
SizeSlug = Annotated[
    str,
    Strict(),
    Field(
        description="Size slug, e.g. s-1vcpu-1gb. Common: " + ", ".join(COMMON_SIZES) + ".",
        examples=list(COMMON_SIZES),
    ),
    Text(SLUG, "a size slug (lowercase letters, digits and dashes, e.g. s-1vcpu-1gb)"),
]
ImageSlug = Annotated[
    str,
    Strict(),
    Field(
        description="Public image slug, e.g. ubuntu-24-04-x64. Common: " + ", ".join(COMMON_IMAGES) + ".",
        examples=list(COMMON_IMAGES),
    ),
    Text(SLUG, "an image slug (lowercase letters, digits and dashes, e.g. ubuntu-24-04-x64)"),
]
SnapshotLabel = Annotated[
    str,
    Strict(),
    Field(
        description="Suffix for the snapshot name: lowercase letters, digits and dashes, up to 40.",
        examples=["nightly"],
    ),
    Text(SNAPSHOT_LABEL, "a snapshot label (lowercase letters, digits and dashes, up to 40)"),
]
Domain = Annotated[
    str,
    Strict(),
    Field(description="A domain managed at DigitalOcean, e.g. example.com.", examples=["example.com"]),
    Text(DOMAIN, "a lowercase domain name such as example.com"),
]
Hostname = Annotated[
    str,
    Strict(),
    Field(description="The DNS record's name, e.g. www, or @ for the domain itself.", examples=["www"]),
    Text(HOSTNAME, "a record name such as www, or @"),
]
DropletTag = Annotated[
    str,
    Strict(),
    Field(description="A DigitalOcean droplet tag.", examples=["nightly-snapshot"]),
    Text(TAG, "a droplet tag (letters, digits, _, - and :, up to 255)"),
]

# -- bookkeeping --------------------------------------------------------------------------------

SAFE_TEXT = f"[^{CONTROL_CHARACTERS}]*"

TriggeredBy = Annotated[
    str,
    Strict(),
    Field(
        min_length=1, max_length=200, description="Who asked, recorded in the ledger.", examples=["user:42"]
    ),
    Text(SAFE_TEXT, "text without control characters"),
]
CustomerDeploymentId = Annotated[
    str,
    Strict(),
    Field(
        min_length=1,
        max_length=200,
        description="The customer's deployment this saga works for (your id, not a Prefect deployment).",
        examples=["dep-1234"],
    ),
    Text(SAFE_TEXT, "text without control characters"),
]

QUEUE = r"[a-z][a-z0-9_-]{0,62}"
QueueName = Annotated[
    str,
    Strict(),
    Field(description="A queue of sagas that `sagas worker --queue NAME` processes run.", examples=["fleet"]),
    Text(QUEUE, "a queue name (lower-case letters, digits, _ and -, starting with a letter, up to 63)"),
]

EXAMPLE_SAGA_ID = "0b9d3c2e-6f4a-4d1b-9a8e-5c7f2e1d0a3b"
UUID_TEXT = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _saga_id(value: object) -> object:
    """A UUID, or its canonical text exactly: no braces, no urn:, no padding, never empty."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and re.fullmatch(UUID_TEXT, value):
        return uuid.UUID(value)  # a UUID already, so a strict model takes it too
    raise PydanticCustomError("saga_id", "must be a saga id: a UUID such as " + EXAMPLE_SAGA_ID)


@dataclass(frozen=True)
class _Pattern:
    """Adds a ``pattern`` to a JSON schema whose validation is done elsewhere."""

    body: str

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = anchored(self.body)
        return json_schema


SagaId = Annotated[
    uuid.UUID,
    BeforeValidator(_saga_id),
    _Pattern(UUID_TEXT),
    Field(description="A saga's id (a UUID).", examples=[EXAMPLE_SAGA_ID]),
]


# -- validating ------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """``data`` as ``model``, or an InputError that names each bad field and says what is wrong."""
    if not isinstance(data, Mapping):
        raise InputError(f"{what} must be a JSON object")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise InputError(f"bad {what}: {problems}") from None


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """The field an error is about. A name that is not a short identifier (an unknown key: it
    could be anything, a pasted token even) is described, not quoted."""
    if not loc:
        return "inputs"
    return ".".join(
        str(p) if isinstance(p, int) or _FIELD_NAME.fullmatch(p) else "(unknown field, name not shown)"
        for p in loc
    )
