"""Validation of domain names and DNS record bodies, with messages modelled on the real API's.

Pure functions: they take what a request sent and return clean values or raise ``ApiError`` (422 for a
record body, 400 for a malformed seeding request). The world stores what they return.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from .errors import bad_request, unprocessable

DEFAULT_TTL = 1800
MIN_TTL = 30
MAX_TTL = 2_147_483_647
# Types a record may be created with here. The spec also lists CAA, SRV and SOA: CAA and SRV need
# fields (flags/tag, port/weight) the simulator does not model, and nobody creates an SOA record.
CREATABLE_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "TXT")
# Every type the list filter accepts (the spec's enum for ``?type=``).
KNOWN_TYPES = ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "SOA", "SRV", "TXT")
NAME_SERVERS = ("ns1.digitalocean.com", "ns2.digitalocean.com", "ns3.digitalocean.com")
MAX_TXT_LENGTH = 4096

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
RECORD_NAME_RE = re.compile(rf"^(?:\*|{_LABEL})(?:\.{_LABEL})*$")
HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
DOMAIN_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


@dataclass(frozen=True)
class RecordSpec:
    """A validated record body."""

    type: str
    name: str
    data: str
    ttl: int
    priority: int | None


def normalize_domain(raw: str) -> str:
    """A domain as the world keys it: lower case, no trailing dot."""
    return raw.strip().rstrip(".").lower()


def parse_domain_name(raw: Any) -> str:
    """A domain name for seeding (``POST /_sim/domains``); 400 when it is not one."""
    if not isinstance(raw, str) or not raw.strip():
        raise bad_request("name is required: the domain to create, e.g. example.com.")
    name = normalize_domain(raw)
    if len(name) > 253 or not DOMAIN_RE.match(name):
        raise bad_request(f"{raw!r} is not a valid domain name (e.g. example.com).")
    return name


def _int_field(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise unprocessable(f"{key.capitalize()} must be an integer.")
    return value


def _hostname_data(kind: str, data: str) -> str:
    if data == "@":
        return data
    if not HOSTNAME_RE.match(data) or len(data) > 254:
        raise unprocessable(f"Data for a {kind} record must be a hostname (e.g. www.example.com.) or @.")
    if not data.endswith("."):
        raise unprocessable("Data needs to end with a dot (.)")
    return data


def parse_record(body: dict[str, Any]) -> RecordSpec:
    """Validate ``POST /v2/domains/{domain}/records``; 422 ``unprocessable_entity`` when invalid."""
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise unprocessable(f"Type can't be blank: use one of {', '.join(CREATABLE_TYPES)}.")
    if kind not in CREATABLE_TYPES:
        if kind in KNOWN_TYPES:
            raise unprocessable(
                f"{kind} records cannot be created in the simulator; use one of {', '.join(CREATABLE_TYPES)}."
            )
        raise unprocessable(f"Type {kind!r} is not a valid record type: use one of {', '.join(KNOWN_TYPES)}.")

    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise unprocessable("Name can't be blank: give a host name relative to the domain (e.g. www) or @.")
    if name != "@" and (len(name) > 253 or not RECORD_NAME_RE.match(name)):
        raise unprocessable(
            f"Name {name!r} is invalid: use letters, digits, hyphens and underscores in dot-separated"
            " labels of up to 63 characters (a leading * for a wildcard), or @ for the domain itself."
        )

    data = body.get("data")
    if not isinstance(data, str) or not data:
        raise unprocessable("Data can't be blank.")
    if kind == "A":
        try:
            ipaddress.IPv4Address(data)
        except ValueError:
            raise unprocessable("IP address did not match IPv4 format (e.g. 127.0.0.1).") from None
    elif kind == "AAAA":
        try:
            ipaddress.IPv6Address(data)
        except ValueError:
            raise unprocessable("IP address did not match IPv6 format (e.g. 2001:db8::1).") from None
    elif kind in ("CNAME", "MX", "NS"):
        data = _hostname_data(kind, data)
    elif kind == "TXT" and len(data) > MAX_TXT_LENGTH:
        raise unprocessable(f"Data for a TXT record must be at most {MAX_TXT_LENGTH} characters.")

    ttl = _int_field(body, "ttl")
    if ttl is None:
        ttl = DEFAULT_TTL
    elif not MIN_TTL <= ttl <= MAX_TTL:
        raise unprocessable(f"TTL must be between {MIN_TTL} and {MAX_TTL} seconds.")

    priority = _int_field(body, "priority")
    if kind == "MX":
        if priority is None or not 0 <= priority <= 65535:
            raise unprocessable("Priority is required for an MX record and must be between 0 and 65535.")
    else:
        priority = None
    return RecordSpec(type=kind, name=name, data=data, ttl=ttl, priority=priority)


def parse_type_filter(raw: str | None) -> str | None:
    """The ``?type=`` filter of the record listing; 400 for a type the API does not know."""
    if raw is None or raw == "":
        return None
    if raw not in KNOWN_TYPES:
        raise bad_request(f"type must be one of: {', '.join(KNOWN_TYPES)}.")
    return raw


__all__ = [
    "DEFAULT_TTL",
    "NAME_SERVERS",
    "RecordSpec",
    "normalize_domain",
    "parse_domain_name",
    "parse_record",
    "parse_type_filter",
]
