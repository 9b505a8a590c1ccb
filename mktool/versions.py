"""The releases of the engines a result depends on, for provenance and for telling drift from change.

manifest.json and fixtures/snapshot.json record them; ``snapshot --check`` compares them with
the recorded ones, so that a fixture regression that moved because an engine release changed
says so instead of advising a re-record.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import duckdb

from mktool import __version__

__all__ = ["ENGINE_PACKAGES", "engine_info", "engine_versions", "version_changes"]

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


def engine_info(con: Any) -> dict[str, str]:
    """manifest.json's ``engine``: which engine computed the lists on ``con``, and its release.

    ``engines`` lists the libraries installed; this names the one the result came from, which
    ``--engine`` chooses (issue 16). The one place that tells connections apart: the Spark
    connection (mktool.sparkdb) is added here as {"name": "spark", "version": spark.engine_version(…)}.
    An unknown connection is a bug, never a guess written into a manifest.
    """
    if isinstance(con, duckdb.DuckDBPyConnection):
        return {"name": "duckdb", "version": duckdb.__version__}
    if getattr(con, "engine_name", None) == "spark":  # mktool.sparkdb.SparkConnection
        return {"name": "spark", "version": str(con.engine_version)}
    raise TypeError(f"engine_info: no engine known for a {type(con).__name__} connection")


def version_changes(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """``["duckdb 2.0.0 → 2.0.1", …]`` for the engines whose release differs from ``recorded``."""
    if not recorded:
        return []
    return [f"{name} {recorded[name]} → {current.get(name, 'not installed')}"
            for name in (*ENGINE_PACKAGES, "python") if name in recorded and recorded[name] != current.get(name)]
