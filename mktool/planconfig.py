"""plan.yaml, read and validated beneath the steps: the windows, top, minimum data, policy,
channels, phrase and sweep grid of `mktool plan` (SPEC §5).

The plan step, export (the phrase and the plan policy's channels) and rule validation all
need this configuration; it lives here so that none of them imports the plan step for it.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mktool import dialect
from mktool.errors import ConfigError, MktoolError
from mktool.schema import CHANNEL_NAMES
from mktool.sqlquote import is_id, quote_literal
from mktool.yamlio import load_yaml, unknown_keys

PLAN_FILE = "plan.yaml"
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


def _fail(message: str, file: Path | None) -> MktoolError:
    return ConfigError(message, file=str(file)) if file is not None else MktoolError(message)


def _positive_number(value: Any, *, where: str, file: Path | None) -> float:
    if isinstance(value, bool):
        raise _fail(f"{where}: expected a number, got {value!r}", file)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(f"{where}: expected a number, got {value!r}", file) from None
    if not math.isfinite(number) or number <= 0:
        raise _fail(f"{where}: must be a positive number, got {value!r}", file)
    return number


def parse_window(value: Any, *, where: str, file: Path | None = None) -> Window:
    """``"LO:HI"`` (command line and YAML) or ``[LO, HI]`` (YAML) → :class:`Window`.

    Both ends must be positive numbers and LO <= HI. Errors start with ``where`` (an option
    such as ``--total-change`` or a dotted key of plan.yaml) and are ConfigErrors naming
    ``file`` when one is given.
    """
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise _fail(f"{where}: expected LO:HI such as 0.6:1.5, got '{value}'", file)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        parts = list(value)
    else:
        hint = " (quote it: YAML reads an unquoted 1:2 as the number 62)" if isinstance(value, int) else ""
        raise _fail(f"{where}: expected \"LO:HI\" such as \"0.6:1.5\", got {value!r}{hint}", file)
    lo = _positive_number(parts[0].strip() if isinstance(parts[0], str) else parts[0], where=f"{where}: LO", file=file)
    hi = _positive_number(parts[1].strip() if isinstance(parts[1], str) else parts[1], where=f"{where}: HI", file=file)
    if lo > hi:
        raise _fail(f"{where}: LO ({_fmt(lo)}) is greater than HI ({_fmt(hi)}); write the window as LO:HI, "
                    f"e.g. {_fmt(hi)}:{_fmt(lo)}", file)
    return Window(lo, hi)


def _top(value: Any, *, where: str, file: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"{where}: must be a whole number >= 1, got {value!r}", file)
    return value


def _min_data(value: Any, *, where: str, file: Path | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _fail(f"{where}: must be a number of MB >= 0, got {value!r}", file)
    return float(value)


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
    overrides: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # the command-line options given

    def settings(self) -> dict[str, Any]:
        """The settings that shape plan_recommendations, as text (recorded for manifest.json)."""
        return {"total_change": str(self.total_change), "rental_change": str(self.rental_change), "top": self.top,
                "min_data_mb": self.min_data_mb, "policy": self.policy, "channels": list(self.channels)}

    def with_overrides(self, *, total_change: str | Window | None = None, rental_change: str | Window | None = None,
                       top: int | None = None, min_data_mb: float | None = None) -> PlanConfig:
        """This configuration with the command-line options that were given (errors name the option)."""
        changes: dict[str, Any] = {}
        if total_change is not None:
            changes["total_change"] = (total_change if isinstance(total_change, Window)
                                       else parse_window(total_change, where="--total-change"))
        if rental_change is not None:
            changes["rental_change"] = (rental_change if isinstance(rental_change, Window)
                                        else parse_window(rental_change, where="--rental-change"))
        if top is not None:
            changes["top"] = _top(top, where="--top", file=None)
        if min_data_mb is not None:
            changes["min_data_mb"] = _min_data(min_data_mb, where="--min-data", file=None)
        given = {"total_change": "--total-change", "rental_change": "--rental-change", "top": "--top",
                 "min_data_mb": "--min-data"}
        overrides = tuple((given[k], str(v)) for k, v in changes.items())
        return replace(self, **changes, overrides=self.overrides + overrides)


def check_script(template: Any, *, where: str, file: Path | None) -> str:
    """The phrase template: a string whose only placeholders are {plan_name}, {new_rental}, {new_total}."""
    if not isinstance(template, str) or not template.strip():
        raise _fail(f"{where}: expected a non-empty phrase, got {template!r}", file)
    if "\x00" in template:
        raise _fail(f"{where}: the phrase contains a NUL character", file)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise _fail(f"{where}: {exc} (write a literal brace as {{{{ or }}}})", file) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in SCRIPT_FIELDS:
            raise _fail(f"{where}: unknown placeholder {{{name}}} (allowed: "
                        f"{', '.join('{' + f + '}' for f in SCRIPT_FIELDS)})", file)
        if spec or conversion:
            raise _fail(f"{where}: placeholder {{{name}}} takes no format (money is always shown with 2 decimals)", file)
    return template


def _windows(value: Any, *, where: str, file: Path) -> tuple[Window, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of \"LO:HI\" windows, got {value!r}", file=str(file))
    return tuple(parse_window(v, where=f"{where}[{i}]", file=file) for i, v in enumerate(value))


def load_plan_config(matrices_dir: Path) -> PlanConfig:
    """Read and validate ``plan.yaml``; every error names the file and the dotted key."""
    path = Path(matrices_dir) / PLAN_FILE
    if not path.exists():
        raise ConfigError(f"missing {PLAN_FILE} in the matrices folder {matrices_dir}", file=str(path),
                          hint="copy the shipped matrices/plan.yaml into it")
    doc = load_yaml(path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a mapping of settings, got {type(doc).__name__}", file=str(path))
    unknown_keys(doc, {"total_change", "rental_change", "top", "min_data_mb", "policy", "channels", "script", "sweep"},
                 file=path, at="")
    defaults = PlanConfig()
    values: dict[str, Any] = {"path": path}
    for key in ("total_change", "rental_change"):
        if doc.get(key) is not None:
            values[key] = parse_window(doc[key], where=key, file=path)
    if doc.get("top") is not None:
        values["top"] = _top(doc["top"], where="top", file=path)
    if doc.get("min_data_mb") is not None:
        values["min_data_mb"] = _min_data(doc["min_data_mb"], where="min_data_mb", file=path)
    if doc.get("policy") is not None:
        policy = doc["policy"]
        if not is_id(policy):
            raise ConfigError(f"policy: expected a policy id such as PLAN_CHANGE, got {policy!r}", file=str(path))
        values["policy"] = policy
    if doc.get("channels") is not None:
        channels = doc["channels"]
        if not isinstance(channels, list) or not channels:
            raise ConfigError(f"channels: expected a non-empty list such as [outbound, sms], got {channels!r}",
                              file=str(path))
        for i, ch in enumerate(channels):
            if ch not in CHANNEL_NAMES:
                raise ConfigError(f"channels[{i}]: unknown channel {ch!r} (known: {', '.join(CHANNEL_NAMES)})",
                                  file=str(path))
        if len(set(channels)) != len(channels):
            raise ConfigError(f"channels: lists a channel twice: {channels!r}", file=str(path))
        values["channels"] = tuple(channels)
    if doc.get("script") is not None:
        values["script"] = check_script(doc["script"], where="script", file=path)
    sweep_doc = doc.get("sweep")
    if sweep_doc is not None:
        if not isinstance(sweep_doc, dict):
            raise ConfigError(f"sweep: expected a mapping with total_change and rental_change, got {sweep_doc!r}",
                              file=str(path))
        unknown_keys(sweep_doc, {"total_change", "rental_change"}, file=path, at="sweep")
        if sweep_doc.get("total_change") is not None:
            values["sweep_total"] = _windows(sweep_doc["total_change"], where="sweep.total_change", file=path)
        if sweep_doc.get("rental_change") is not None:
            values["sweep_rental"] = _windows(sweep_doc["rental_change"], where="sweep.rental_change", file=path)
    return replace(defaults, **values)


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
