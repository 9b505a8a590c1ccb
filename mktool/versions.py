"""The releases of the engines a result depends on, for provenance and for telling drift from change.

manifest.json and fixtures/snapshot.json record them; ``snapshot --check`` compares them with
the recorded ones, so that a fixture regression that moved because an engine release changed
says so instead of advising a re-record.
"""

from __future__ import annotations

import platform
from importlib import metadata

from mktool import __version__

__all__ = ["ENGINE_PACKAGES", "engine_versions", "version_changes"]

#: The libraries whose release can change what mktool computes or writes.
ENGINE_PACKAGES = ("duckdb", "sqlglot", "pyarrow")


def engine_versions() -> dict[str, str]:
    """{"mktool": …, "python": …, "duckdb": …, "sqlglot": …, "pyarrow": …} of this process."""
    versions = {"mktool": __version__, "python": platform.python_version()}
    for name in ENGINE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def version_changes(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """``["duckdb 2.0.0 → 2.0.1", …]`` for the engines whose release differs from ``recorded``."""
    if not recorded:
        return []
    return [f"{name} {recorded[name]} → {current.get(name, 'not installed')}"
            for name in (*ENGINE_PACKAGES, "python") if name in recorded and recorded[name] != current.get(name)]
