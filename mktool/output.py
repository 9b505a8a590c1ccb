"""Writing query results: to a file (whole or not at all) or to stdout for piping.

DuckDB's COPY streams the query to a temporary name beside the target; ``os.replace`` then
moves it into place atomically, so a killed run never leaves a partial file under a final
name. The query must carry its own ORDER BY: same inputs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from mktool.errors import MktoolError
from mktool.schema import LIST_FORMATS

FORMATS = LIST_FORMATS
COPY_OPTIONS = {
    "csv": "FORMAT csv, HEADER true",
    "parquet": "FORMAT parquet, COMPRESSION zstd",
    "jsonl": "FORMAT json",
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise MktoolError(f"unknown format '{fmt}' (choose one of {', '.join(FORMATS)})")
    return fmt


def infer_format(out: str, fmt: str | None) -> str:
    """``--format`` wins; otherwise the file's extension; otherwise csv."""
    if fmt:
        return check_format(fmt)
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix in ("json", "ndjson"):
        suffix = "jsonl"
    return suffix if suffix in FORMATS else "csv"


def copy_to_file(con: duckdb.DuckDBPyConnection, query: str, target: Path, fmt: str,
                 params: Sequence[Any] = ()) -> int:
    """COPY ``query`` into ``target`` atomically; returns the number of rows written."""
    check_format(fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        sql_path = str(tmp).replace("'", "''")
        result = con.execute(f"COPY ({query}) TO '{sql_path}' ({COPY_OPTIONS[fmt]})", list(params)).fetchone()
        rows = int(result[0]) if result else 0
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_file(target: Path, text: str) -> None:
    """A report (json, csv, a rendered table) written whole or not at all: a temporary name
    beside ``target``, fsync, then ``os.replace``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; a report is as readable as any file
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class PipeClosed(MktoolError):
    """The reader of standard output went away before the whole file was written."""


def stream_file(path: Path) -> None:
    """Copy a finished file to standard output and flush it: returns only when every byte was taken.

    A consumer that closed the pipe (``| head``, a gateway that died) is an ``Error:``, not a
    success: the caller must not treat the list as delivered. Standard output is then pointed at
    /dev/null so that Python's flush at exit does not fail a second time.
    """
    if sys.stdout is None:  # started with descriptor 1 closed (`>&-`): Python has no stdout at all
        raise MktoolError("standard output: it is closed, so the list cannot be written")
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file descriptor (a test harness)
        fd = None
    try:
        sys.stdout.flush()
        with open(path, "rb") as fh:
            if fd is not None:
                # os.write on the descriptor, every partial write followed up: a write that a closing
                # reader cut short is reported by the next one (EPIPE), where BufferedWriter can
                # report the whole list as written.
                for block in iter(lambda: fh.read(1 << 20), b""):
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
            elif hasattr(sys.stdout, "buffer"):
                shutil.copyfileobj(fh, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
            else:  # pragma: no cover - text-only stdout
                sys.stdout.write(fh.read().decode("utf-8"))
                sys.stdout.flush()
    except BrokenPipeError:
        _detach_stdout()
        raise PipeClosed("standard output: the consumer closed the pipe before the whole list was written") from None
    except OSError as exc:
        _detach_stdout()
        raise MktoolError(f"standard output: cannot write the list ({exc.strerror or exc})") from None


def _detach_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file descriptor (a test harness)
        pass


def copy_to_stdout(con: duckdb.DuckDBPyConnection, query: str, fmt: str, params: Sequence[Any] = ()) -> int:
    """Stream ``query`` to standard output (through a temporary file, so DuckDB can still spill).

    A reader that stops early (``| head``) ends the stream quietly: these tables are stored in the
    database already, nothing depends on the copy being whole. (An export's list does: see
    mktool.export, which treats a closed pipe as not delivered.)
    """
    with tempfile.TemporaryDirectory(prefix="mktool-out-") as tmpdir:
        path = Path(tmpdir) / f"out.{fmt}"
        rows = copy_to_file(con, query, path, fmt, params)
        with contextlib.suppress(PipeClosed):  # `mktool score --out - | head`: a preview, the table is stored
            stream_file(path)
    return rows


def write_query(con: duckdb.DuckDBPyConnection, query: str, out: str, fmt: str | None,
                params: Sequence[Any] = ()) -> int:
    """``--out FILE|-`` with ``--format``: the one way every command writes a table."""
    fmt = infer_format(out, fmt)
    if out == "-":
        return copy_to_stdout(con, query, fmt, params)
    return copy_to_file(con, query, Path(out), fmt, params)
