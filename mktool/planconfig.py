"""plan.yaml, read and validated beneath the steps: the windows, top, minimum data, policy,
channels, phrase and sweep grid of `mktool plan` (SPEC §5).

The plan step, export (the phrase and the plan policy's channels) and rule validation all
need this configuration; it lives here so that none of them imports the plan step for it.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from mktool import dialect
from mktool.errors import ConfigError, MktoolError
from mktool.schema import CHANNEL_NAMES
from mktool.sqlquote import is_id, quote_literal
from mktool.yamlio import Located, read_yaml

PLAN_FILE = "plan.yaml"
T = TypeVar("T")
#: Placeholders the recommendation phrase may use.
SCRIPT_FIELDS = ("plan_name", "new_rental", "new_total")


# -- windows ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """An inclusive range [lo, hi] of a change rate."""

    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{_fmt(self.lo)}:{_fmt(self.hi)}"


def _fmt(x: float) -> str:
    text = f"{x:g}"
    return text if any(ch in text for ch in ".e") else text + ".0"


class Invalid(ValueError):
    """A value that breaks its rule; the caller says where it was written (an option, a key of plan.yaml)."""


def _positive_number(value: Any, *, part: str) -> float:
    if isinstance(value, bool):
        raise Invalid(f"{part}expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"{part}expected a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise Invalid(f"{part}must be a positive number, got {value!r}")
    return number


def window(value: Any) -> Window:
    """``"LO:HI"`` (command line and YAML) or ``[LO, HI]`` (YAML) → :class:`Window`; raises :class:`Invalid`.

    Both ends must be positive numbers and LO <= HI.
    """
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise Invalid(f"expected LO:HI such as 0.6:1.5, got '{value}'")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        parts = list(value)
    else:
        hint = " (quote it: YAML reads an unquoted 1:2 as the number 62)" if isinstance(value, int) else ""
        raise Invalid(f"expected \"LO:HI\" such as \"0.6:1.5\", got {value!r}{hint}")
    lo = _positive_number(parts[0].strip() if isinstance(parts[0], str) else parts[0], part="LO: ")
    hi = _positive_number(parts[1].strip() if isinstance(parts[1], str) else parts[1], part="HI: ")
    if lo > hi:
        raise Invalid(f"LO ({_fmt(lo)}) is greater than HI ({_fmt(hi)}); write the window as LO:HI, "
                      f"e.g. {_fmt(hi)}:{_fmt(lo)}")
    return Window(lo, hi)


def parse_window(value: Any, *, where: str) -> Window:
    """A window given as a command-line value; errors start with ``where`` (the option)."""
    try:
        return window(value)
    except Invalid as exc:
        raise MktoolError(f"{where}: {exc}") from None


def top_value(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"must be a whole number >= 1, got {value!r}")
    return value


def min_data_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise Invalid(f"must be a number of MB >= 0, got {value!r}")
    return float(value)


def _option(check: Callable[[Any], T], value: Any, option: str) -> T:
    try:
        return check(value)
    except Invalid as exc:
        raise MktoolError(f"{option}: {exc}") from None


def _key(check: Callable[[Any], T], node: Located) -> T:
    try:
        return check(node.value)
    except Invalid as exc:
        raise node.error(str(exc)) from None


# -- configuration (plan.yaml) ---------------------------------------------------------------------
DEFAULT_SCRIPT = "推荐您改用{plan_name}，月租{new_rental}元，按您现在的用量每月约{new_total}元。"
DEFAULT_SWEEP_TOTAL = (Window(0.5, 1.3), Window(0.6, 1.3), Window(0.6, 1.5), Window(0.7, 1.5), Window(0.8, 1.2))
DEFAULT_SWEEP_RENTAL = (Window(1.0, 1.5), Window(1.0, 2.0), Window(1.0, 2.5))


@dataclass(frozen=True)
class PlanConfig:
    """What plan.yaml says, after validation (defaults are SPEC §5's)."""

    total_change: Window = Window(0.6, 1.5)
    rental_change: Window = Window(1.0, 2.0)
    top: int = 1
    min_data_mb: float = 5.0
    policy: str = "PLAN_CHANGE"
    channels: tuple[str, ...] = ("outbound", "sms")
    script: str = DEFAULT_SCRIPT
    sweep_total: tuple[Window, ...] = DEFAULT_SWEEP_TOTAL
    sweep_rental: tuple[Window, ...] = DEFAULT_SWEEP_RENTAL
    path: Path | None = field(default=None, compare=False)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # plan.yaml's key lines
    overrides: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # the command-line options given

    def settings(self) -> dict[str, Any]:
        """The settings that shape plan_recommendations, as text (recorded for manifest.json)."""
        return {"total_change": str(self.total_change), "rental_change": str(self.rental_change), "top": self.top,
                "min_data_mb": self.min_data_mb, "policy": self.policy, "channels": list(self.channels)}

    def with_overrides(self, *, total_change: str | Window | None = None, rental_change: str | Window | None = None,
                       top: int | None = None, min_data_mb: float | None = None) -> PlanConfig:
        """This configuration with the overrides that were given (errors name the setting; the CLI names its option)."""
        changes: dict[str, Any] = {}
        if total_change is not None:
            changes["total_change"] = (total_change if isinstance(total_change, Window)
                                       else _option(window, total_change, "total_change"))
        if rental_change is not None:
            changes["rental_change"] = (rental_change if isinstance(rental_change, Window)
                                        else _option(window, rental_change, "rental_change"))
        if top is not None:
            changes["top"] = _option(top_value, top, "top")
        if min_data_mb is not None:
            changes["min_data_mb"] = _option(min_data_value, min_data_mb, "min_data_mb")
        given = {"total_change": "--total-change", "rental_change": "--rental-change", "top": "--top",
                 "min_data_mb": "--min-data"}
        overrides = tuple((given[k], str(v)) for k, v in changes.items())
        return replace(self, **changes, overrides=self.overrides + overrides)


def check_script(template: Any) -> str:
    """The phrase template: a string whose only placeholders are {plan_name}, {new_rental}, {new_total}."""
    if not isinstance(template, str) or not template.strip():
        raise Invalid(f"expected a non-empty phrase, got {template!r}")
    if "\x00" in template:
        raise Invalid("the phrase contains a NUL character")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise Invalid(f"{exc} (write a literal brace as {{{{ or }}}})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in SCRIPT_FIELDS:
            raise Invalid(f"unknown placeholder {{{name}}} (allowed: "
                          f"{', '.join('{' + f + '}' for f in SCRIPT_FIELDS)})")
        if spec or conversion:
            raise Invalid(f"placeholder {{{name}}} takes no format (money is always shown with 2 decimals)")
    return template


def _windows(node: Located) -> tuple[Window, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise node.error(f"expected a non-empty list of \"LO:HI\" windows, got {node.value!r}")
    return tuple(_key(window, item) for item in node.items())


PLAN_KEYS = {"total_change", "rental_change", "top", "min_data_mb", "policy", "channels", "script", "sweep"}


def load_plan_config(matrices_dir: Path) -> PlanConfig:
    """Read and validate ``plan.yaml``; every error names the file, line and dotted key."""
    path = Path(matrices_dir) / PLAN_FILE
    if not path.exists():
        raise ConfigError(f"missing {PLAN_FILE} in the matrices folder {matrices_dir}", file=str(path),
                          hint="copy the shipped matrices/plan.yaml into it")
    doc = read_yaml(path).root
    if doc.value is None:
        doc = Located(doc.doc, "", {})
    if not isinstance(doc.value, dict):
        raise doc.error(f"expected a mapping of settings, got {type(doc.value).__name__}")
    doc.check_keys(PLAN_KEYS)
    values: dict[str, Any] = {"path": path}
    for key in ("total_change", "rental_change"):
        if doc.child(key).value is not None:
            values[key] = _key(window, doc.child(key))
    if doc.child("top").value is not None:
        values["top"] = _key(top_value, doc.child("top"))
    if doc.child("min_data_mb").value is not None:
        values["min_data_mb"] = _key(min_data_value, doc.child("min_data_mb"))
    policy = doc.child("policy")
    if policy.value is not None:
        if not is_id(policy.value):
            raise policy.error(f"expected a policy id such as PLAN_CHANGE, got {policy.value!r}")
        values["policy"] = policy.value
    channels = doc.child("channels")
    if channels.value is not None:
        if not isinstance(channels.value, list) or not channels.value:
            raise channels.error(f"expected a non-empty list such as [outbound, sms], got {channels.value!r}")
        for item in channels.items():
            if item.value not in CHANNEL_NAMES:
                raise item.error(f"unknown channel {item.value!r} (known: {', '.join(CHANNEL_NAMES)})")
        if len(set(channels.value)) != len(channels.value):
            raise channels.error(f"lists a channel twice: {channels.value!r}")
        values["channels"] = tuple(channels.value)
    if doc.child("script").value is not None:
        values["script"] = _key(check_script, doc.child("script"))
    sweep = doc.child("sweep")
    if sweep.value is not None:
        if not isinstance(sweep.value, dict):
            raise sweep.error(f"expected a mapping with total_change and rental_change, got {sweep.value!r}")
        sweep.check_keys({"total_change", "rental_change"})
        if sweep.child("total_change").value is not None:
            values["sweep_total"] = _windows(sweep.child("total_change"))
        if sweep.child("rental_change").value is not None:
            values["sweep_rental"] = _windows(sweep.child("rental_change"))
    return replace(PlanConfig(lines=doc.doc.lines), **values)


def script_sql(template: str) -> str:
    """The recommendation phrase as one SQL expression over plan_recommendations columns.

    For ``mktool export``: {plan_name} is the plan's name, {new_rental} and {new_total} are
    yuan with 2 decimals (``228.00``). The template must have passed :func:`check_script`.
    """
    parts: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(quote_literal(literal))
        if name == "plan_name":
            parts.append("coalesce(plan_name, plan_id)")
        elif name in ("new_rental", "new_total"):
            parts.append(dialect.money_text(name))
    if not parts:
        return "''"
    return parts[0] if len(parts) == 1 else "concat(" + ", ".join(parts) + ")"
