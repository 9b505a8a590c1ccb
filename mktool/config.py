"""Run settings: where the database and the rule files are, and how much of the machine DuckDB may use.

Every setting has a command-line option and an environment twin (``MKTOOL_DB``,
``MKTOOL_MATRICES``, ``MKTOOL_MEMORY_LIMIT``, ``MKTOOL_THREADS``, ``MKTOOL_TEMP_DIR``,
``MKTOOL_LOCK_WAIT``) so that cron jobs and CI can set them once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB = Path("mktool.duckdb")
PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_matrices_dir() -> Path:
    """The default rule files shipped with the package.

    A wheel carries them as ``mktool/_matrices``; an editable install or a source checkout
    uses the repository's top-level ``matrices/`` folder.
    """
    packaged = PACKAGE_DIR / "_matrices"
    if packaged.is_dir():
        return packaged
    return PACKAGE_DIR.parent / "matrices"


def resolve_matrices_dir(option: Path | None) -> Path:
    """``--matrices`` / ``MKTOOL_MATRICES``, else ``./matrices`` when present, else the shipped defaults."""
    if option is not None:
        return option
    env = os.environ.get("MKTOOL_MATRICES")
    if env:
        return Path(env)
    local = Path("matrices")
    if local.is_dir():
        return local
    return shipped_matrices_dir()


def default_memory_limit() -> str:
    """Three quarters of physical memory: leaves room for the OS and Python while DuckDB spills the rest."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return "4GB"
    return f"{max(1, int(total * 0.75 / 2**30))}GB"


@dataclass
class Settings:
    """Everything a library call needs to know about its environment."""

    db_path: Path = DEFAULT_DB
    matrices_dir: Path = field(default_factory=lambda: resolve_matrices_dir(None))
    memory_limit: str = field(default_factory=default_memory_limit)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    temp_dir: Path | None = None  # None: "<db>.tmp" beside the database
    lock_wait: float = 0.0  # seconds to wait for another run's lock before refusing

    @property
    def spill_dir(self) -> Path:
        return self.temp_dir if self.temp_dir is not None else self.db_path.with_name(self.db_path.name + ".tmp")

    @classmethod
    def from_options(
        cls,
        db: Path | None = None,
        matrices: Path | None = None,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_dir: Path | None = None,
        lock_wait: float | None = None,
    ) -> "Settings":
        """Options win over environment variables, which win over defaults."""
        env = os.environ
        return cls(
            db_path=db or Path(env.get("MKTOOL_DB") or DEFAULT_DB),
            matrices_dir=resolve_matrices_dir(matrices),
            memory_limit=memory_limit or env.get("MKTOOL_MEMORY_LIMIT") or default_memory_limit(),
            threads=threads or int(env.get("MKTOOL_THREADS") or 0) or (os.cpu_count() or 1),
            temp_dir=temp_dir or (Path(env["MKTOOL_TEMP_DIR"]) if env.get("MKTOOL_TEMP_DIR") else None),
            lock_wait=lock_wait if lock_wait is not None else float(env.get("MKTOOL_LOCK_WAIT") or 0),
        )
