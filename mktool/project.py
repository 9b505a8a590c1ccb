"""The rules folder, loaded and validated once: what every step of a command reads.

A :class:`Project` holds the typed, validated contents of the matrices folder — the score
model (scores.yaml), the policy catalogue, the channels and contact policy, every matrix,
the plan configuration (plan.yaml) — and the secrets the folder names from the environment
(the hash salt of each ``mask: hash`` channel, read once here through its ``salt_env``).

:func:`load_project` runs the same validation as ``mktool check`` (every problem collected)
and raises the first with a count of the rest. A command loads its project once and passes
it to each step, so that ``mktool run`` refuses a broken rule file or a missing salt before
its first write rather than after three steps have committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mktool.errors import ConfigError
from mktool.planconfig import PlanConfig
from mktool.rules import Channel, ChannelConfig, CheckReport, Policy, Problem, RuleSet, validate_all
from mktool.scoremodel import ScoreModel, load_score_model


@dataclass(frozen=True)
class Project:
    """One validated matrices folder (see the module docstring)."""

    root: Path
    scores: ScoreModel
    rules: RuleSet
    plan: PlanConfig
    #: channel -> salt, for the ``mask: hash`` channels whose salt variable is set (never shown)
    salts: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: tuple[str, ...] = ()

    @property
    def policies(self) -> dict[str, Policy]:
        return self.rules.policies

    @property
    def channels(self) -> ChannelConfig:
        return self.rules.channels

    @property
    def warnings(self) -> list[Problem]:
        return self.rules.warnings

    def score_model(self, params: dict[str, Any] | None = None) -> ScoreModel:
        """The score model, or (with ``--param`` overrides) scores.yaml re-derived with them."""
        return load_score_model(self.root, params) if params else self.scores

    def salt(self, channel: Channel) -> str | None:
        """The salt of a ``mask: hash`` channel (None for other masks); refused when unset."""
        if channel.mask != "hash":
            return None
        salt = self.salts.get(channel.name)
        if not salt:
            raise _missing_salt(channel)
        return salt

    def require_salts(self, channels: Iterable[str] | None = None) -> None:
        """Refuse, before any work, a ``mask: hash`` channel (of ``channels``; default all) without its salt."""
        wanted = set(self.channels.names if channels is None else channels)
        missing = [ch for name, ch in self.channels.channels.items()
                   if name in wanted and ch.mask == "hash" and not self.salts.get(name)]
        if missing:
            first = _missing_salt(missing[0])
            more = len(missing) - 1
            if more:
                others = ", ".join(f"{ch.name} ({ch.salt_env})" for ch in missing[1:])
                first = ConfigError(first.message, hint=f"{first.hint}; also missing: {others}")
            raise first


def _missing_salt(channel: Channel) -> ConfigError:
    return ConfigError(f"channels.{channel.name}.mask: hash needs a salt in the environment variable "
                       f"{channel.salt_env}",
                       hint=f"export {channel.salt_env}=<secret shared with the channel's vendor>")


def read_salts(channels: ChannelConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The salt of every ``mask: hash`` channel whose variable is set (and not empty)."""
    env = os.environ if environ is None else environ
    return {name: env[ch.salt_env] for name, ch in channels.channels.items()
            if ch.mask == "hash" and env.get(ch.salt_env)}


def project_from_report(report: CheckReport, environ: Mapping[str, str] | None = None) -> Project:
    """The project of a ``validate_all`` report; raises its first error (with a count of the rest)."""
    report.raise_for_errors()
    assert report.rules is not None and report.scores is not None and report.plan is not None
    return Project(root=Path(report.matrices_dir), scores=report.scores, rules=report.rules, plan=report.plan,
                   salts=read_salts(report.rules.channels, environ), files=tuple(report.files))


def load_project(root: Path, environ: Mapping[str, str] | None = None) -> Project:
    """Load and validate the whole matrices folder once; raises the first problem found."""
    return project_from_report(validate_all(Path(root)), environ)
