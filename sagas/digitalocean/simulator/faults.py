"""Fault injection rules, set through ``/_sim/faults`` and consulted for every ``/v2`` request.

A rule matches a request by method (``*`` for any) and by a regular expression searched in the URL path
(``re.search``: anchor it with ``^...$`` to match the whole path). Every matching request counts as a
match; the first ``after`` matches pass untouched, then the rule fires on the next ``times`` matches
(``null`` = forever). Rules are checked in the order they were added: every firing ``latency`` rule adds
its delay, and the first firing rule of any other kind decides the response (later rules are not
consulted for that request, so they neither count it nor fire).

``error_500`` answers before the request is served (nothing applied); ``error_500_applied`` serves it
first (a write is applied, as DigitalOcean's edge can do) and replaces its answer with the same 500.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FaultKind = Literal[
    "error_500",
    "error_500_applied",
    "error_503_html",
    "rate_limit_429",
    "latency",
    "lose_response",
    "slow_response",
]


class FaultRule(BaseModel):
    """One fault rule as posted to ``/_sim/faults``."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    method: str = "*"
    path: str = ".*"
    times: int | None = Field(default=1, ge=0)
    after: int = Field(default=0, ge=0)
    seconds: float = Field(default=1.0, ge=0)
    """``latency``/``slow_response``: real wall seconds to wait (not scaled); ``rate_limit_429``: the
    ``retry-after``. ``latency`` waits before the request is applied, ``slow_response`` after."""

    @field_validator("method")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()

    @field_validator("path")
    @classmethod
    def _compiles(cls, v: str) -> str:
        re.compile(v)
        return v


@dataclass
class _Armed:
    rule: FaultRule
    pattern: re.Pattern[str]
    matched: int = 0
    fired: int = 0

    def view(self) -> dict[str, Any]:
        return {**self.rule.model_dump(), "matched": self.matched, "fired": self.fired}


@dataclass
class FaultPlan:
    """What to do to one request: wait ``latency`` seconds, then apply ``kind`` (None = serve normally)."""

    latency: float = 0.0
    kind: FaultKind | None = None
    rule: FaultRule | None = None
    fired: list[FaultRule] = field(default_factory=list)


class FaultRegistry:
    """The active rules with their counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Armed] = []
        self.fired_total = 0

    def add(self, rules: list[FaultRule]) -> None:
        with self._lock:
            self._rules.extend(_Armed(r, re.compile(r.path)) for r in rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self.fired_total = 0

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a.view() for a in self._rules]

    def plan(self, method: str, path: str) -> FaultPlan:
        """Count this request against the rules and decide which faults it gets."""
        plan = FaultPlan()
        with self._lock:
            for armed in self._rules:
                rule = armed.rule
                if rule.method not in ("*", method.upper()) or not armed.pattern.search(path):
                    continue
                armed.matched += 1
                if armed.matched <= rule.after or (rule.times is not None and armed.fired >= rule.times):
                    continue
                armed.fired += 1
                self.fired_total += 1
                plan.fired.append(rule)
                if rule.kind == "latency":
                    plan.latency += rule.seconds
                    continue
                plan.kind, plan.rule = rule.kind, rule
                break
        return plan
