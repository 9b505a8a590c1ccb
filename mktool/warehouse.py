"""mktool's state on ``--engine spark`` (issue 16): every table as Parquet under one root path, and
transactions that publish a set of partition replacements with one commit point.

Layout under ``root`` (a local folder or any Hadoop URI: ``hdfs://``, ``s3a://``, ``file:/``)::

    <root>/<table>/_table.json              {"columns": [[name, duckdb_type], ...],
                                             "partitioned_by": "month" | null, "version": n}
    <root>/<table>/month=<M>/part-*.parquet a table with a ``month`` column (hive style, month not in the files)
    <root>/<table>/data/part-*.parquet      every other table
    <root>/_staging/<run>/<table>/<part>/   what a transaction wrote, invisible to readers
    <root>/_journal/<run>.json              the publish journal: its rename into place is the commit point
    <root>/_trash/<run>/<table>/<part>/     the partitions a publish replaced, deleted once it has finished

Why a journal and not a rename per table: Hadoop's ``rename`` onto an existing directory moves the
source *into* it, so replacing a partition takes two renames (old → trash, staged → place) and no
single rename can switch several tables or months at once. The journal names every rename a
transaction makes; once it is in place the transaction is committed and :meth:`Warehouse.recover`
(run by every ``Warehouse(...)``) finishes the renames, each step skipped when already done. Before
it, the staging is all there is, readers never look there, and recovery deletes it.

A partition with no rows is still a directory with one zero-row Parquet file carrying the schema, so
that "this month was computed and is empty" differs from "this month was never computed".

One writer at a time: ``recover()`` deletes staging that no journal names, so a second process's
transaction in flight would lose its staging (sparkdb holds the run's lock, as DuckDB's file lock does).

File operations go through the Hadoop FileSystem of the session's JVM (:class:`HadoopFS`), so the
same code runs on a local folder, HDFS and S3A. A Spark Connect session has no JVM on this side: its
warehouse must be a folder this process reaches as a local path (:class:`LocalFS`, Python's own file
calls), which the Connect server and its executors must reach at the same path (the same machine, or
a shared mount); a Hadoop URI over Spark Connect is refused (:func:`open_fs`).
"""

from __future__ import annotations

import datetime as dt
import glob as globbing
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mktool.config import is_uri, local_path, no_warehouse
from mktool.errors import LockedError, MktoolError
from mktool.publish import fault

TABLE_FILE = "_table.json"
STAGING = "_staging"
JOURNAL = "_journal"
TRASH = "_trash"
DATA = "data"  # the one partition of a table without a month column
MONTH = "month"
SCRATCH = "_scratch"  # <root>/_scratch/<connection>/: mktool.sparkdb's materialised TEMP tables
LOCK_FILE = "_mktool.lock"  # <root>/_mktool.lock: the writer's (or first reader's) lock on a URI root
READERS = "_mktool.readers"  # <root>/_mktool.readers/<holder>: one file per reader of a URI root
_LOCK_NAMES = (LOCK_FILE, READERS, f"{LOCK_FILE}.break")
_TMP = "_put"  # per-put scratch under _staging/<run>/ (a name no table can have)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PART_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # what Spark writes unescaped in month=<M>

#: (root, run id) of every transaction open in this process: recovery leaves their staging alone, so
#: a second Warehouse on the same root (another connection, a reader) cannot delete a writer's work.
_OPEN: set[tuple[str, str]] = set()
#: The scratch folders (``<root>/_scratch/<id>``) of the connections open in this process.
_SCRATCH_OPEN: set[str] = set()


class WarehouseError(MktoolError):
    """The warehouse is not as a call needs it (no such table, rows outside the partitions put, a Spark
    Connect session): the message names the table and what to do."""


# -- the DuckDB ⇄ Spark type map (sparkdb's DESCRIBE uses it too) ------------------------------------
_TO_SPARK = {
    "VARCHAR": "string", "BIGINT": "bigint", "INTEGER": "int", "SMALLINT": "smallint", "TINYINT": "tinyint",
    "DOUBLE": "double", "FLOAT": "float", "DATE": "date", "TIMESTAMP": "timestamp_ntz",
    "TIMESTAMP WITH TIME ZONE": "timestamp", "BOOLEAN": "boolean", "BLOB": "binary", "HUGEINT": "decimal(38,0)",
}
#: DuckDB's aliases → the spelling its DESCRIBE lists.
_ALIASES = {
    "TEXT": "VARCHAR", "STRING": "VARCHAR", "CHAR": "VARCHAR", "BPCHAR": "VARCHAR", "INT": "INTEGER",
    "INT4": "INTEGER", "SIGNED": "INTEGER", "INT8": "BIGINT", "LONG": "BIGINT", "INT2": "SMALLINT",
    "SHORT": "SMALLINT", "INT1": "TINYINT", "FLOAT8": "DOUBLE", "FLOAT4": "FLOAT", "REAL": "FLOAT",
    "BOOL": "BOOLEAN", "LOGICAL": "BOOLEAN", "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
    "DATETIME": "TIMESTAMP", "BYTEA": "BLOB", "INT128": "HUGEINT", "NUMERIC": "DECIMAL",
}
_DECIMAL_RE = re.compile(r"^(?:DECIMAL|NUMERIC)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$")


def _split_top(text: str) -> list[str]:
    """``a INTEGER, b DECIMAL(18,2)`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "(<") - (char in ")>")
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _inside(text: str, opening: str) -> str | None:
    """What ``NAME(…)`` / ``name<…>`` holds when ``text`` is one (case-insensitively), else None."""
    closing = ")" if opening.endswith("(") else ">"
    if text[: len(opening)].upper() == opening.upper() and text.endswith(closing):
        return text[len(opening):-1]
    return None


def _struct_fields(body: str, sep: str) -> list[tuple[str, str]]:
    """(name, type) of ``a INTEGER, b VARCHAR`` (DuckDB, sep " ") or ``a:int,b:string`` (Spark, sep ":")."""
    fields = []
    for part in _split_top(body):
        name, _, type_ = part.partition(sep)
        name = name.strip().strip('"`')
        if not name or not type_.strip():
            raise WarehouseError(f"struct field {part!r} has no name or no type")
        fields.append((name, type_.strip()))
    return fields


def normal_type(duckdb_type: str) -> str:
    """A DuckDB type in the spelling DESCRIBE lists (``decimal(18, 2)`` → ``DECIMAL(18,2)``, ``TEXT[]`` →
    ``VARCHAR[]``, ``map(text, int)`` → ``MAP(VARCHAR, INTEGER)``): _table.json keeps what DuckDB shows."""
    text = " ".join(duckdb_type.strip().split())
    if text.endswith("[]"):
        return normal_type(text[:-2]) + "[]"
    body = _inside(text, "STRUCT(")
    if body is not None:
        return "STRUCT(" + ", ".join(f"{n} {normal_type(t)}" for n, t in _struct_fields(body, " ")) + ")"
    body = _inside(text, "MAP(")
    if body is not None and len(_split_top(body)) == 2:
        return "MAP(" + ", ".join(normal_type(t) for t in _split_top(body)) + ")"
    text = text.upper()
    m = _DECIMAL_RE.match(text)
    if m:
        precision = int(m.group(1) or 18)
        scale = int(m.group(2) or (3 if m.group(1) is None else 0))
        return f"DECIMAL({precision},{scale})"
    text = re.sub(r"^VARCHAR\s*\(\s*\d+\s*\)$", "VARCHAR", text)
    text = _ALIASES.get(text, text)
    if text not in _TO_SPARK:
        raise WarehouseError(f"type {duckdb_type!r} has no Spark counterpart in the warehouse",
                             hint=f"use one of {', '.join(_TO_SPARK)}, DECIMAL(p,s), a list T[], "
                                  "STRUCT(name T, …) or MAP(K, V)")
    return text


def spark_type(duckdb_type: str) -> str:
    """The Spark SQL type (DDL spelling) a DuckDB column type is stored as. DuckDB's TIMESTAMP has no
    zone, so it is Spark's ``timestamp_ntz`` (Arrow and Parquet then carry no zone either); HUGEINT
    is ``decimal(38,0)``, as mktool.dialect renders it."""
    text = normal_type(duckdb_type)
    if text.endswith("[]"):
        return f"array<{spark_type(text[:-2])}>"
    body = _inside(text, "STRUCT(")
    if body is not None:
        return "struct<" + ",".join(f"{_quote(n)}:{spark_type(t)}" for n, t in _struct_fields(body, " ")) + ">"
    body = _inside(text, "MAP(")
    if body is not None:
        key, value = _split_top(body)
        return f"map<{spark_type(key)},{spark_type(value)}>"
    m = _DECIMAL_RE.match(text)
    if m:
        return f"decimal({m.group(1)},{m.group(2)})"
    return _TO_SPARK[text]


_FROM_SPARK = {"string": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER", "integer": "INTEGER",
               "smallint": "SMALLINT", "tinyint": "TINYINT", "double": "DOUBLE", "float": "FLOAT",
               "date": "DATE", "timestamp_ntz": "TIMESTAMP", "timestamp": "TIMESTAMP", "boolean": "BOOLEAN",
               "binary": "BLOB", "void": "INTEGER", "decimal": "DECIMAL(10,0)"}


def duckdb_type(spark_datatype: Any) -> str:
    """The DuckDB spelling (as DESCRIBE lists it) of a pyspark ``DataType`` or a Spark type string
    (``simpleString()``: string → VARCHAR, array<string> → VARCHAR[], struct<a:int> → STRUCT(a INTEGER)).

    Spark's zoned ``timestamp`` maps to ``TIMESTAMP`` too: mktool's SQL is DuckDB's, and its
    ``CAST(… AS TIMESTAMP)`` renders as Spark's zoned type under the session's fixed UTC zone.
    ``void`` (an untyped NULL) is ``INTEGER``, as DuckDB types ``SELECT NULL``."""
    name = spark_datatype if isinstance(spark_datatype, str) else spark_datatype.simpleString()
    text = name.strip()
    for opening, build in (("array<", None), ("struct<", "STRUCT"), ("map<", "MAP")):
        body = _inside(text, opening)
        if body is None:
            continue
        if build is None:
            return duckdb_type(body) + "[]"
        if build == "STRUCT":
            return "STRUCT(" + ", ".join(f"{n} {duckdb_type(t)}" for n, t in _struct_fields(body, ":")) + ")"
        parts = _split_top(body)
        if len(parts) == 2:
            return f"MAP({duckdb_type(parts[0])}, {duckdb_type(parts[1])})"
    lowered = text.lower().replace(" ", "")
    m = re.match(r"^decimal\((\d+),(\d+)\)$", lowered)
    if m:
        return f"DECIMAL({m.group(1)},{m.group(2)})"
    if lowered in _FROM_SPARK:
        return _FROM_SPARK[lowered]
    if re.match(r"^(var)?char\(\d+\)$", lowered):
        return "VARCHAR"
    raise WarehouseError(f"Spark type {name!r} has no DuckDB counterpart mktool uses")


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ddl(columns: Sequence[tuple[str, str]]) -> str:
    """A Spark DDL schema string (``spark.read.schema`` and ``createDataFrame`` take it)."""
    return ", ".join(f"{_quote(n)} {spark_type(t)}" for n, t in columns)


# -- file operations --------------------------------------------------------------------------------
class HadoopFS:
    """The few file operations the warehouse makes, on the Hadoop FileSystem of the session's JVM
    (file:, hdfs:, s3a: alike). ``rename`` raises instead of returning False: a rename that did not
    happen must never look like one that did."""

    def __init__(self, session: Any, root: str) -> None:
        try:
            self.jvm = session._jvm
            jsc = session._jsc
            gateway = session.sparkContext._gateway
        except Exception as exc:  # noqa: BLE001 - Spark Connect raises its own attribute errors
            raise WarehouseError(
                "the Spark warehouse needs a classic Spark session (a JVM on this side): "
                "Spark Connect sessions are not supported this round",
                hint="run Spark with a master URL (--spark-master) instead of a Spark Connect remote") from exc
        if self.jvm is None or jsc is None:
            raise WarehouseError("the Spark warehouse: the Spark session has been stopped (no JVM)")
        self.gateway = gateway
        self.conf = jsc.hadoopConfiguration()
        self.root = root
        self.fs = self.path(root).getFileSystem(self.conf)

    def path(self, uri: str) -> Any:
        return self.jvm.org.apache.hadoop.fs.Path(uri)

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self.path(uri)))

    def mkdirs(self, uri: str) -> None:
        if not self.fs.mkdirs(self.path(uri)):
            raise OSError(f"could not create {uri}")

    def delete(self, uri: str) -> None:
        """Remove a file or a folder with everything in it (nothing when it is not there)."""
        self.fs.delete(self.path(uri), True)

    def listdir(self, uri: str) -> list[str]:
        """The names in a folder, sorted (none when it does not exist)."""
        p = self.path(uri)
        if not self.fs.exists(p):
            return []
        return sorted(str(s.getPath().getName()) for s in self.fs.listStatus(p))

    def list_dirs(self, uri: str) -> list[str]:
        p = self.path(uri)
        if not self.fs.exists(p):
            return []
        return sorted(str(s.getPath().getName()) for s in self.fs.listStatus(p) if s.isDirectory())

    def glob(self, pattern: str) -> list[str]:
        """The files (not folders) matching a glob pattern, as full URIs, sorted: Hadoop's
        ``globStatus`` (``*``, ``?``, ``[set]``, also ``{a,b}``), on the pattern's own file system."""
        p = self.path(pattern)
        statuses = p.getFileSystem(self.conf).globStatus(p)
        if statuses is None:  # no match on a pattern without glob characters
            return []
        return sorted(str(s.getPath().toString()) for s in statuses if s.isFile())

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, which must not exist (Hadoop would move src *into* it)."""
        self.mkdirs(parent(dst))
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def copy_to_local(self, uri: str, local: str) -> None:
        """Copy a file or folder to a path on this machine (no .crc files): what DuckDB reads."""
        self.fs.copyToLocalFile(False, self.path(uri), self.path(f"file:{local}"), True)

    def read_text(self, uri: str) -> str:
        stream = self.fs.open(self.path(uri))
        try:
            data = self.jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        """Write a small file (overwriting); hsync so that a journal is on disk before its rename."""
        stream = self.fs.create(self.path(uri), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
            stream.hsync()
        finally:
            stream.close()

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over the file ``dst``: in one step with FileContext's OVERWRITE rename (local
        folders, HDFS); where the file system has no FileContext, delete then rename (every caller
        does it under a journal, which redoes both after a crash)."""
        hadoop = self.jvm.org.apache.hadoop.fs
        try:
            context = hadoop.FileContext.getFileContext(self.fs.getUri(), self.conf)
        except Exception:  # noqa: BLE001 - py4j's error for UnsupportedFileSystemException
            self.delete(dst)
            self.rename(src, dst)
            return
        options = self.gateway.new_array(hadoop.Options.Rename, 1)
        options[0] = hadoop.Options.Rename.OVERWRITE
        context.rename(self.path(src), self.path(dst), options)

    # -- inputs and the lock: on the file system of each URI (an extract on hdfs://, a warehouse on file:)
    def _on(self, uri: str) -> tuple[Any, Any]:
        """(Hadoop Path, its FileSystem) of any URI: inputs need not live where the warehouse does."""
        p = self.path(uri)
        return p, p.getFileSystem(self.conf)

    def info(self, uri: str) -> FileInfo | None:
        """What is at ``uri`` (qualified URI, folder or file, size), or None when nothing is."""
        p, fs = self._on(uri)
        if not fs.exists(p):
            return None
        status = fs.getFileStatus(p)
        return FileInfo(str(fs.makeQualified(p).toString()), bool(status.isDirectory()), int(status.getLen()))

    def files_under(self, uri: str) -> list[FileInfo]:
        """Every file below a folder (recursively), sorted by URI."""
        p, fs = self._on(uri)
        found = []
        listing = fs.listFiles(p, True)
        while listing.hasNext():
            status = listing.next()
            found.append(FileInfo(str(status.getPath().toString()), False, int(status.getLen())))
        return sorted(found, key=lambda f: f.uri)

    def sha256(self, uri: str) -> str:
        """The SHA-256 of a file's bytes, computed in the JVM as the file streams past (no bytes cross
        to Python): the same digest mktool.publish.file_sha256 gives a local copy of the file."""
        p, fs = self._on(uri)
        stream = fs.open(p)
        try:
            return str(self.jvm.org.apache.commons.codec.digest.DigestUtils.sha256Hex(stream))
        finally:
            stream.close()

    def open_input(self, uri: str) -> HadoopInput:
        """A seekable binary reader of one file (pyarrow reads a Parquet footer through it)."""
        p, fs = self._on(uri)
        return HadoopInput(self.jvm, fs.open(p), int(fs.getFileStatus(p).getLen()))

    def create_new(self, uri: str, text: str) -> bool:
        """Create the file ``uri`` holding ``text`` only if nothing is there: False when something is.
        Atomic on HDFS (``create(path, overwrite=false)`` is one NameNode call) and on a local disk
        (O_EXCL); not on S3A (see :class:`HadoopLock`)."""
        p, fs = self._on(uri)
        if str(fs.getUri().getScheme()) == "file":
            # Hadoop's local create checks, then opens: two processes can both pass the check.
            # open(O_CREAT | O_EXCL) is the one atomic "create if absent" of a local file system.
            local = local_path(str(fs.makeQualified(p).toString()))
            for attempt in range(3):  # a reader's release may remove the empty folder meanwhile
                os.makedirs(os.path.dirname(local), exist_ok=True)
                try:
                    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    break
                except FileExistsError:
                    return False
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        try:
            stream = fs.create(p, False)
        except Exception as exc:  # noqa: BLE001 - py4j's error for FileAlreadyExistsException
            text = str(exc)
            if "FileAlreadyExists" in text or "AlreadyBeingCreated" in text or "already exists" in text:
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
            stream.hsync()
        finally:
            stream.close()
        return True

    def delete_if_empty(self, uri: str) -> None:
        """Remove a folder only when nothing is in it (a run's parent folders: no empty leftovers)."""
        p, fs = self._on(uri)
        try:
            if fs.exists(p) and fs.getFileStatus(p).isDirectory() and not list(fs.listStatus(p)):
                fs.delete(p, False)
        except Exception:  # noqa: BLE001 - another run wrote into it meanwhile: it stays
            return


@dataclass(frozen=True)
class FileInfo:
    """One path as a Hadoop file system reports it."""

    uri: str  # qualified: file:/a/b, hdfs://nn:8020/a/b
    is_dir: bool
    size: int


class HadoopInput(io.RawIOBase):
    """A read-only, seekable Python file over a Hadoop input stream (pyarrow.parquet takes it): each
    read is one positioned read in the JVM, so a Parquet footer costs a few calls, not the file."""

    def __init__(self, jvm: Any, stream: Any, size: int) -> None:
        super().__init__()
        self._jvm, self._stream, self._size, self._pos = jvm, stream, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        n = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        if n <= 0:
            return b""
        self._stream.seek(self._pos)
        data = bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(self._stream, n))
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


class LocalFS:
    """The same file operations as :class:`HadoopFS` on a local folder with Python's own calls: the
    backend of a session with no JVM on this side (Spark Connect). It takes and returns the same
    ``file:`` URIs, so the warehouse's paths are the ones Spark (on the server) reads and writes.

    Hadoop's local file system keeps a checksum beside each file it writes (``.NAME.crc``) and
    checks it when it reads the file: a file this backend writes or moves loses its stale checksum
    (a missing one is not checked), so that a warehouse used over Spark Connect stays readable by a
    classic session, and checksum files are never listed, as Hadoop lists none."""

    def __init__(self, root: str) -> None:
        self.root = root

    local = staticmethod(local_path)

    @staticmethod
    def _uri(path: str) -> str:
        return "file:" + os.path.abspath(path)

    @staticmethod
    def _hidden(name: str) -> bool:
        return name.startswith(".") and name.endswith(".crc")

    def _drop_checksum(self, path: str) -> None:
        head, name = os.path.split(path)
        try:
            os.remove(os.path.join(head, f".{name}.crc"))
        except FileNotFoundError:
            pass

    def exists(self, uri: str) -> bool:
        return os.path.lexists(self.local(uri))

    def mkdirs(self, uri: str) -> None:
        os.makedirs(self.local(uri), exist_ok=True)

    def delete(self, uri: str) -> None:
        """Remove a file or a folder with everything in it (nothing when it is not there)."""
        path = self.local(uri)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
            self._drop_checksum(path)

    def listdir(self, uri: str) -> list[str]:
        """The names in a folder, sorted (none when it does not exist), checksum files left out."""
        path = self.local(uri)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if not self._hidden(n))

    def list_dirs(self, uri: str) -> list[str]:
        path = self.local(uri)
        return [n for n in self.listdir(uri) if os.path.isdir(os.path.join(path, n))]

    def glob(self, pattern: str) -> list[str]:
        """The files (not folders) matching a glob pattern (``*``, ``?``, ``[set]``; no ``{a,b}``), as
        ``file:`` URIs, sorted."""
        found = globbing.glob(self.local(pattern), include_hidden=True)
        return sorted(self._uri(f) for f in found if os.path.isfile(f) and not self._hidden(os.path.basename(f)))

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, which must not exist (as HadoopFS: never into a folder)."""
        source, target = self.local(src), self.local(dst)
        if os.path.lexists(target):
            raise OSError(f"could not rename {src} to {dst}: {dst} exists")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        if os.path.isfile(target):
            self._drop_checksum(source)
            self._drop_checksum(target)

    def read_text(self, uri: str) -> str:
        with open(self.local(uri), encoding="utf-8") as fh:
            return fh.read()

    def write_text(self, uri: str, text: str) -> None:
        """Write a small file (overwriting); fsync so that a journal is on disk before its rename."""
        path = self.local(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self._drop_checksum(path)

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over the file ``dst`` in one step (``os.replace``)."""
        source, target = self.local(src), self.local(dst)
        os.replace(source, target)
        self._drop_checksum(source)
        self._drop_checksum(target)


    def info(self, uri: str) -> FileInfo | None:
        """What is at ``uri`` (as :meth:`HadoopFS.info`), or None when nothing is."""
        path = self.local(uri)
        if not os.path.lexists(path):
            return None
        is_dir = os.path.isdir(path)
        return FileInfo(self._uri(path), is_dir, 0 if is_dir else os.path.getsize(path))

    def files_under(self, uri: str) -> list[FileInfo]:
        """Every file below a folder (recursively), sorted by URI, checksum files left out."""
        found = []
        for base, _, files in os.walk(self.local(uri)):
            found += [FileInfo(self._uri(os.path.join(base, f)), False, os.path.getsize(os.path.join(base, f)))
                      for f in files if not self._hidden(f)]
        return sorted(found, key=lambda f: f.uri)

    def sha256(self, uri: str) -> str:
        digest = hashlib.sha256()
        with open(self.local(uri), "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def open_input(self, uri: str) -> io.BufferedReader:
        return open(self.local(uri), "rb")

    def create_new(self, uri: str, text: str) -> bool:
        """Create the file ``uri`` holding ``text`` only if nothing is there (O_EXCL): False when something is."""
        path = self.local(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def delete_if_empty(self, uri: str) -> None:
        """Remove a folder only when nothing is in it."""
        try:
            os.rmdir(self.local(uri))
        except OSError:  # not empty, not there, or not a folder: it stays
            return

    def copy_to_local(self, uri: str, local: str) -> None:
        """Copy a file or folder to a path on this machine (already local: a plain copy)."""
        source = self.local(uri)
        if os.path.isdir(source):
            shutil.copytree(source, local, ignore=shutil.ignore_patterns(".*.crc"))
        else:
            shutil.copy2(source, local)


def has_jvm(session: Any) -> bool:
    """Whether ``session`` has a JVM on this side: a classic session does (even a stopped one, whose
    ``_jvm`` is None), a Spark Connect session raises on ``_jvm``."""
    try:
        session._jvm  # noqa: B018 - the attribute access is the test
    except Exception:  # noqa: BLE001 - Spark Connect raises its own attribute error
        return False
    return True


#: The warehouse's file operations: Hadoop's (a classic session) or Python's (Spark Connect, a local folder).
FileSystem = HadoopFS | LocalFS


def open_fs(session: Any, root: str) -> FileSystem:
    """The file operations for a warehouse at ``root`` (a URI, see :func:`_root_uri`): Hadoop's with a
    classic session; Python's on a local folder with a Spark Connect session, which has no Hadoop
    FileSystem on this side; a Hadoop URI over Spark Connect is refused, saying what to do."""
    if has_jvm(session):
        return HadoopFS(session, root)
    if root.startswith("file:"):
        return LocalFS(root)
    raise WarehouseError(
        f"the warehouse {root} is a Hadoop URI, and a Spark Connect session has no Hadoop FileSystem on "
        "this side to publish it with (mktool's commit renames folders and writes its journal itself)",
        hint="give --warehouse a local folder that this machine and the Connect server's driver and "
             "executors all reach at the same path (the same machine, or a shared mount), or run on the "
             "cluster with spark-submit or --spark-master instead of --spark-remote (docs/spark.md)")


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def _root_uri(root: str) -> str:
    """A Hadoop URI for ``root``: a URI as given, a plain path made absolute as ``file:/…``."""
    root = str(root)
    if is_uri(root):
        return root.rstrip("/") or root
    return "file:" + os.path.abspath(root)


def _holder_text(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


class HadoopLock:
    """The run lock of a warehouse named by a URI (hdfs://, s3a://, file:), which has no advisory locks:
    a writer holds ``<root>/_mktool.lock``, created only if absent; each reader holds a file of its own
    under ``<root>/_mktool.readers/``. A writer waits until no reader is left, a reader while a writer
    holds the lock, as the local lock's exclusive and shared modes do. Every file names its holder (host,
    pid, time, command) for the "locked by" message.

    Stale locks: a holder on this host whose process is gone (a killed run) is removed when found (a
    writer's lock under ``_mktool.lock.break``, taken the same way, so that two runs never both remove
    it). A holder on another host cannot be checked from here: the message names it and the file to
    remove once that run is known to be gone. Atomicity: HDFS creates a file only if absent in one
    step, and so does a local folder (O_EXCL); S3A's create checks, then writes, so on S3 two runs
    starting in the same second are not reliably kept apart.
    """

    def __init__(self, fs: FileSystem, root: str, *, exclusive: bool, wait: float) -> None:
        self.fs = fs
        self.root = root
        self.exclusive = exclusive
        self.wait = wait
        self.uri = f"{root}/{LOCK_FILE}"
        self.readers = f"{root}/{READERS}"
        self.held: str | None = None  # the file this lock created
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:12],
                      "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      "command": " ".join(["mktool", *sys.argv[1:]])[:300]}

    def _text(self) -> str:
        return json.dumps(self.owner, ensure_ascii=False) + "\n"

    def _read(self, uri: str) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.fs.read_text(uri))
        except Exception:  # noqa: BLE001 - gone meanwhile, or cut off by a crash: judged on the next try
            return None
        return holder if isinstance(holder, dict) else {}

    def _dead_here(self, holder: dict[str, Any]) -> bool:
        """A holder on this host whose process no longer runs (a killed or crashed run)."""
        pid = holder.get("pid")
        if holder.get("host") != self.owner["host"] or not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # someone else's live process
        return False

    def acquire(self) -> HadoopLock:
        deadline = time.monotonic() + self.wait
        while True:
            holder = self._try()
            if holder is None:
                return self
            if time.monotonic() >= deadline:
                where = self.uri if holder.get("_file") in (None, self.uri) else holder["_file"]
                raise LockedError(
                    f"warehouse is locked by another mktool run ({_holder_text(holder)})", file=self.root,
                    hint=f"wait for it to finish, or pass --wait SECONDS (env MKTOOL_LOCK_WAIT) to queue behind it; "
                         f"if that run is gone (its machine crashed), remove {where}")
            time.sleep(0.5)

    def _try(self) -> dict[str, Any] | None:
        """One attempt: None when the lock is now held, else the holder that keeps it."""
        if self.exclusive:
            if not self.fs.create_new(self.uri, self._text()):
                holder = self._read(self.uri)
                if holder is not None and self._dead_here(holder):
                    self._break(holder)
                    return self._try()
                return holder or {}
            self.held = self.uri
            reader = self._live_reader()
            if reader is not None:
                self.release()
                return reader
            return None
        holder = self._writer()
        if holder is not None:
            return holder
        mine = f"{self.readers}/{self.owner['host']}-{self.owner['pid']}-{self.owner['id']}"
        if not self.fs.create_new(mine, self._text()):
            raise WarehouseError(f"lock file {mine} exists already (a reader with this process's id)")
        self.held = mine
        holder = self._writer()  # a writer that took the lock between the look and the create
        if holder is not None:
            self.release()
            return holder
        return None

    def _writer(self) -> dict[str, Any] | None:
        if not self.fs.exists(self.uri):
            return None
        holder = self._read(self.uri)
        if holder is not None and self._dead_here(holder):
            self._break(holder)
            return self._writer()
        return holder or {}

    def _live_reader(self) -> dict[str, Any] | None:
        for name in self.fs.listdir(self.readers):
            uri = f"{self.readers}/{name}"
            holder = self._read(uri)
            if holder is None:
                continue
            if self._dead_here(holder):
                self.fs.delete(uri)  # a reader's file is its own: no other run writes that name
                continue
            return {**holder, "_file": uri}
        return None

    def _break(self, dead: dict[str, Any]) -> None:
        """Remove a dead holder's lock, under ``_mktool.lock.break`` so that one run removes it (and a
        second cannot remove the fresh lock of a third that took over meanwhile)."""
        breaker = f"{self.uri}.break"
        if not self.fs.create_new(breaker, self._text()):
            other = self._read(breaker)
            if other is not None and self._dead_here(other):
                self.fs.delete(breaker)
            time.sleep(0.1)
            return
        try:
            if self._read(self.uri) == dead:
                self.fs.delete(self.uri)
        finally:
            self.fs.delete(breaker)

    def release(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            if held == self.uri and self._read(held) not in (None, self.owner):
                return  # never remove another run's lock (ours was removed as stale by mistake)
            self.fs.delete(held)
            if held != self.uri:
                self.fs.delete_if_empty(self.readers)


# -- what a transaction holds and what its journal records ------------------------------------------
@dataclass
class _Pending:
    """One table's change in a transaction: dropped, or put (staged partitions; ``whole`` = every old
    partition goes)."""

    columns: list[tuple[str, str]] | None = None  # None: dropped
    staged: set[str] = field(default_factory=set)  # partition folder names: month=M or data
    whole: bool = False


def _partition_dir(value: str) -> str:
    return DATA if value == DATA else f"{MONTH}={value}"


def _partition_value(name: str) -> str:
    return name.removeprefix(f"{MONTH}=")


def _is_partition_dir(name: str, partitioned: bool) -> bool:
    return name.startswith(f"{MONTH}=") if partitioned else name == DATA


class Warehouse:
    """The committed tables under ``root`` (see the module docstring); ``begin()`` starts a change."""

    def __init__(self, session: Any, root: str, *, access: str | None = None, wait: float = 0.0,
                 must_exist: bool = False) -> None:
        """Open the warehouse at ``root`` and finish any interrupted publish (:meth:`recover`).

        ``access`` ("read" or "write") takes the run lock of a URI root (:class:`HadoopLock`, waiting up to
        ``wait`` seconds) before anything else, and a writer removes the scratch of runs that are gone
        (:meth:`clean_scratch`): a local folder's lock is mktool.database's, taken before the session
        starts, and its holder passes ``access`` too. ``must_exist``: a missing root is refused, and
        nothing is created (a read-only command)."""
        self.session = session
        self.root = _root_uri(root)
        self.fs = open_fs(session, self.root)
        self.lock: HadoopLock | None = None
        absent = self.fs.info(self.root) is None
        if must_exist and absent:
            raise no_warehouse(str(root))
        if access is not None and is_uri(str(root)):
            self.lock = HadoopLock(self.fs, self.root, exclusive=access == "write", wait=wait).acquire()
        try:
            #: nothing but lock files under the root once the lock is held (judged under the lock: a
            #: run that waited behind the one that made the warehouse finds its tables)
            self.empty_at_open = not [n for n in self.fs.listdir(self.root)
                                      if n not in _LOCK_NAMES and not n.startswith(".")]
            #: this open made the root: a command that then commits nothing removes it (mktool.database)
            self.created = absent and self.empty_at_open
            self.fs.mkdirs(self.root)
            self.recover()
            if access == "write":
                self.clean_scratch()
        except BaseException:
            self.release()
            raise

    def remove_created(self) -> None:
        """Remove the root this open made (``created``) once the lock is given back: a command refused
        before it committed anything leaves no warehouse behind. Kept when another run took the lock
        meanwhile (its lock file is there)."""
        if self.created and not self.fs.exists(f"{self.root}/{LOCK_FILE}"):
            self.fs.delete(self.root)

    def release(self) -> None:
        """Give back the run lock (a no-op without one); the connection's close calls it."""
        if self.lock is not None:
            lock, self.lock = self.lock, None
            lock.release()

    def new_scratch(self) -> str:
        """A scratch folder for one connection's TEMP tables (``<root>/_scratch/<id>``), kept from
        :meth:`clean_scratch` while it is open in this process."""
        uri = f"{self.root}/{SCRATCH}/{uuid.uuid4().hex[:12]}"
        _SCRATCH_OPEN.add(uri)
        return uri

    def drop_scratch(self, uri: str) -> None:
        """Delete a connection's scratch folder, and ``_scratch`` itself once empty."""
        _SCRATCH_OPEN.discard(uri)
        self.fs.delete(uri)
        self.fs.delete_if_empty(f"{self.root}/{SCRATCH}")

    def clean_scratch(self) -> None:
        """Delete the scratch of every connection that is not open in this process: a run that crashed
        or was killed never reached the close that deletes its own. Only under the exclusive lock, when
        no other run's connection can be open."""
        base = f"{self.root}/{SCRATCH}"
        for name in self.fs.listdir(base):
            if f"{base}/{name}" not in _SCRATCH_OPEN:
                self.fs.delete(f"{base}/{name}")
        self.fs.delete_if_empty(base)

    # -- paths
    def _table_uri(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _staging_uri(self, run_id: str) -> str:
        return f"{self.root}/{STAGING}/{run_id}"

    def _journal_uri(self, run_id: str) -> str:
        return f"{self.root}/{JOURNAL}/{run_id}.json"

    def _trash_uri(self, run_id: str) -> str:
        return f"{self.root}/{TRASH}/{run_id}"

    # -- reading the committed state
    def tables(self) -> list[str]:
        return [name for name in self.fs.list_dirs(self.root)
                if not name.startswith(("_", ".")) and self.fs.exists(f"{self._table_uri(name)}/{TABLE_FILE}")]

    def exists(self, table: str) -> bool:
        return self.fs.exists(f"{self._table_uri(_table_name(table))}/{TABLE_FILE}")

    def _meta(self, table: str) -> dict[str, Any]:
        name = _table_name(table)
        uri = f"{self._table_uri(name)}/{TABLE_FILE}"
        if not self.fs.exists(uri):
            raise WarehouseError(f"no table {name} in the warehouse {self.root}", table=name)
        meta: dict[str, Any] = json.loads(self.fs.read_text(uri))
        return meta

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(str(n), str(t)) for n, t in self._meta(table)["columns"]]

    def version(self, table: str) -> int:
        return int(self._meta(table)["version"])

    def partitions(self, table: str) -> list[str]:
        """The months of a monthly table ("2026-10", sorted), or ["data"]; only those that are in place."""
        name = _table_name(table)
        partitioned = self._meta(name)["partitioned_by"] == MONTH
        return [_partition_value(d) for d in self.fs.list_dirs(self._table_uri(name))
                if _is_partition_dir(d, partitioned)]

    def read(self, table: str) -> Any:
        """The committed rows as a DataFrame, columns in _table.json order and typed as it says.

        Spark lists a DataFrame's files when it is made: one held across a commit that replaced its
        partitions reads files that went to the trash, so read again after each commit."""
        name = _table_name(table)
        columns = self.columns(name)
        return self._read_parts(columns, [(self._table_uri(name), self._partition_dirs(name))])

    def _partition_dirs(self, table: str) -> list[str]:
        """The committed partition folders of a table (none when it does not exist)."""
        return [_partition_dir(p) for p in self.partitions(table)] if self.exists(table) else []

    def _read_parts(self, columns: list[tuple[str, str]], sources: list[tuple[str, list[str]]]) -> Any:
        """One DataFrame over partition folders of one or more bases (the table, a staging folder):
        the schema is given, so nothing is inferred and ``month`` comes back as the text of its folder."""
        names = [n for n, _ in columns]
        frames = []
        for base, dirs in sources:
            if dirs:
                reader = self.session.read.schema(_ddl(columns)).option("basePath", base)
                frames.append(reader.parquet(*[f"{base}/{d}" for d in dirs]).select(*[_quote(n) for n in names]))
        if not frames:
            return self.session.createDataFrame([], _ddl(columns))
        out = frames[0]
        for other in frames[1:]:
            out = out.unionByName(other)
        return out

    # -- transactions
    def begin(self, run_id: str | None = None) -> Transaction:
        run = run_id or f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        if not _RUN_RE.match(run):
            raise WarehouseError(f"run id {run!r}: letters, digits, '.', '_' and '-' only")
        if (self.root, run) in _OPEN or self.fs.exists(self._staging_uri(run)) \
                or self.fs.exists(self._journal_uri(run)):
            raise WarehouseError(f"run id {run!r} is already in use in the warehouse {self.root}")
        return Transaction(self, run)

    def recover(self) -> None:
        """Finish every committed publish (its journal is in place), then delete what no journal names:
        uncommitted staging, half-written journals, trash of finished runs. Safe to run any number of
        times, and at any point of an interrupted recovery."""
        names = self.fs.listdir(f"{self.root}/{JOURNAL}")
        committed = [(run, json.loads(self.fs.read_text(self._journal_uri(run))))
                     for run in (n.removesuffix(".json") for n in names if n.endswith(".json"))]
        for run, journal in sorted(committed, key=lambda c: (c[1]["created_at"], c[0])):  # oldest first
            self._publish(run, journal)
        for name in self.fs.listdir(f"{self.root}/{JOURNAL}"):
            if not name.endswith(".json"):  # a journal whose write a crash cut off: never committed
                self.fs.delete(f"{self.root}/{JOURNAL}/{name}")
        for folder in (STAGING, TRASH):
            for run in self.fs.listdir(f"{self.root}/{folder}"):
                if (self.root, run) not in _OPEN:
                    self.fs.delete(f"{self.root}/{folder}/{run}")

    def _publish(self, run: str, journal: dict[str, Any]) -> None:
        """Carry out a committed journal; every step checks whether it is done already."""
        staging, trash = self._staging_uri(run), self._trash_uri(run)
        for table, change in journal["tables"].items():
            target = self._table_uri(table)
            if change["action"] == "drop":
                if self.fs.exists(target):
                    self.fs.rename(target, f"{trash}/{table}")
                continue
            for part in change["place"]:
                staged, placed = f"{staging}/{table}/{part}", f"{target}/{part}"
                if not self.fs.exists(staged):
                    continue  # placed by an earlier attempt
                if self.fs.exists(placed):
                    self._to_trash(placed, f"{trash}/{table}/{part}")
                    fault("warehouse_between_renames")
                self.fs.rename(staged, placed)
                fault("warehouse_after_partition")
            for part in change["remove"]:
                if self.fs.exists(f"{target}/{part}"):
                    self._to_trash(f"{target}/{part}", f"{trash}/{table}/{part}")
            meta = {"columns": change["columns"], "partitioned_by": change["partitioned_by"],
                    "version": change["version"]}
            tmp = f"{target}/{TABLE_FILE}.{run}"
            self.fs.write_text(tmp, json.dumps(meta, ensure_ascii=False) + "\n")
            self.fs.replace(tmp, f"{target}/{TABLE_FILE}")
        fault("warehouse_before_cleanup")
        self.fs.delete(staging)
        self.fs.delete(trash)
        self.fs.delete(self._journal_uri(run))

    def _to_trash(self, src: str, dst: str) -> None:
        if self.fs.exists(dst):  # cannot happen within one run; never move a folder into another
            self.fs.delete(dst)
        self.fs.rename(src, dst)


def _table_name(table: str) -> str:
    """Table names as DuckDB compares them (case-insensitively): stored lower-case."""
    name = table.lower()
    if not _NAME_RE.match(name):
        raise WarehouseError(f"table name {table!r}: a letter, then letters, digits and '_' only", table=table)
    return name


class Transaction:
    """A set of table replacements and drops, staged at once and published together by ``commit``."""

    def __init__(self, warehouse: Warehouse, run_id: str) -> None:
        self.warehouse = warehouse
        self.run_id = run_id
        self.fs = warehouse.fs
        self.staging = warehouse._staging_uri(run_id)
        self.pending: dict[str, _Pending] = {}
        self.state = "open"  # open → committed | rolled back
        self._puts = 0
        _OPEN.add((warehouse.root, run_id))

    def _close(self, state: str) -> None:
        self.state = state
        _OPEN.discard((self.warehouse.root, self.run_id))

    def _open(self) -> None:
        if self.state != "open":
            raise WarehouseError(f"warehouse transaction {self.run_id} is {self.state}: begin a new one")

    # -- reading, with this transaction's own writes
    def exists(self, table: str) -> bool:
        name = _table_name(table)
        if name in self.pending:
            return self.pending[name].columns is not None
        return self.warehouse.exists(name)

    def columns(self, table: str) -> list[tuple[str, str]]:
        name = _table_name(table)
        change = self.pending.get(name)
        if change is None:
            return self.warehouse.columns(name)
        if change.columns is None:
            raise WarehouseError(f"no table {name}: this transaction dropped it", table=name)
        return list(change.columns)

    def partitions(self, table: str) -> list[str]:
        kept, staged = self._visible(_table_name(table))
        return sorted(_partition_value(d) for d in kept | staged)

    def _visible(self, table: str) -> tuple[set[str], set[str]]:
        """(committed partition folders still visible, staged partition folders) of a table."""
        change = self.pending.get(table)
        if change is None:
            return set(self.warehouse._partition_dirs(table)), set()
        if change.columns is None:
            raise WarehouseError(f"no table {table}: this transaction dropped it", table=table)
        kept = set() if change.whole else set(self.warehouse._partition_dirs(table)) - change.staged
        return kept, set(change.staged)

    def read(self, table: str) -> Any:
        name = _table_name(table)
        columns = self.columns(name)
        kept, staged = self._visible(name)
        return self.warehouse._read_parts(columns, [(self.warehouse._table_uri(name), sorted(kept)),
                                                    (f"{self.staging}/{name}", sorted(staged))])

    # -- writing
    def put(self, table: str, df: Any, columns: list[tuple[str, str]], *,
            partitions: Sequence[str] | None) -> None:
        """Replace these partitions of ``table`` (None: the whole table) with ``df``'s rows, written to
        staging now. ``df`` has exactly the table's columns (cast to their types here); a row whose
        month is not among ``partitions`` is an error (nothing of this put is kept then)."""
        self._open()
        name = _table_name(table)
        cols = [(str(n), normal_type(t)) for n, t in columns]
        names = [n for n, _ in cols]
        if len({n.lower() for n in names}) != len(names) or not names:
            raise WarehouseError(f"put into {name}: column names must be unique and at least one", table=name)
        partitioned = MONTH in names
        if partitioned and dict(cols)[MONTH] != "VARCHAR":
            raise WarehouseError(f"put into {name}: the month column must be VARCHAR (YYYY-MM text), "
                                 f"not {dict(cols)[MONTH]}", table=name, column=MONTH)
        wanted = self._wanted(name, partitioned, partitions)
        if wanted is not None and self.exists(name) and self.columns(name) != cols:
            raise WarehouseError(f"put into {name}: the columns differ from the table's; replacing only "
                                 "some partitions would mix two schemas (replace the whole table)", table=name)
        have = {c.lower(): c for c in df.columns}
        missing = [n for n in names if n.lower() not in have]
        extra = sorted(set(have) - {n.lower() for n in names})
        if missing or extra:
            raise WarehouseError(f"put into {name}: the rows' columns are not the table's "
                                 f"(missing {missing or 'none'}, extra {extra or 'none'})", table=name)
        typed = df.select(*[df[_quote(have[n.lower()])].cast(spark_type(t)).alias(n) for n, t in cols])
        self._puts += 1
        scratch = f"{self.staging}/{_TMP}{self._puts}"
        try:
            written = self._write(typed, cols, scratch, partitioned, wanted)
            allowed = {_partition_dir(p) for p in wanted} if wanted is not None else None
            outside = sorted(d for d in written if (allowed is not None and d not in allowed)
                             or (partitioned and not _PART_VALUE_RE.match(_partition_value(d))))
            if outside:
                raise WarehouseError(f"put into {name}: rows outside the partitions put "
                                     f"({', '.join(_partition_value(d) for d in outside)}; put "
                                     f"{', '.join(wanted) if wanted is not None else 'any month'})",
                                     table=name, hint="a NULL month is written as __HIVE_DEFAULT_PARTITION__")
            change = self.pending.get(name)
            if change is None or change.columns is None or wanted is None:
                # a new change; a dropped table or a whole put replaces every old partition
                for old in (change.staged if change is not None else ()):
                    self.fs.delete(f"{self.staging}/{name}/{old}")
                change = _Pending(columns=cols, whole=wanted is None or change is not None)
                self.pending[name] = change
            for part in sorted(written):
                dst = f"{self.staging}/{name}/{part}"
                self.fs.delete(dst)
                self.fs.rename(f"{scratch}/{part}", dst)
                change.staged.add(part)
        finally:
            self.fs.delete(scratch)

    def _wanted(self, table: str, partitioned: bool, partitions: Sequence[str] | None) -> list[str] | None:
        """The partition values a put names (months, or ["data"]), checked; None = the whole table."""
        if partitions is None:
            return None
        if isinstance(partitions, str):
            raise WarehouseError(f"put into {table}: partitions is a list of months, not the text {partitions!r}")
        values = sorted(set(partitions))
        if not partitioned:
            if values != [DATA]:
                raise WarehouseError(f"put into {table}: a table without a month column has one partition "
                                     f"'data', not {values}", table=table)
            return None  # its one partition is the whole table
        bad = [v for v in values if not _PART_VALUE_RE.match(v) or v == DATA]
        if bad:
            raise WarehouseError(f"put into {table}: partition value(s) {bad} cannot be folder names "
                                 "(letters, digits, '.', '_', '-')", table=table)
        return values

    def _write(self, df: Any, columns: list[tuple[str, str]], scratch: str, partitioned: bool,
               wanted: list[str] | None) -> set[str]:
        """Write ``df`` under ``scratch`` as partition folders; a named partition without rows gets
        one zero-row file. Returns the partition folder names written."""
        if not partitioned:
            df.write.mode("error").parquet(f"{scratch}/{DATA}")
            return {DATA}
        df.write.mode("error").partitionBy(MONTH).parquet(scratch)
        written = {d for d in self.fs.list_dirs(scratch) if d.startswith(f"{MONTH}=")}
        data_columns = [c for c in columns if c[0] != MONTH]
        for value in wanted or []:
            if _partition_dir(value) not in written:
                empty = self.warehouse.session.createDataFrame([], _ddl(data_columns)).coalesce(1)
                empty.write.mode("error").parquet(f"{scratch}/{_partition_dir(value)}")
                written.add(_partition_dir(value))
        return written

    def drop(self, table: str) -> None:
        """Drop ``table`` (its folder goes at commit); dropping a table that is not there is an error."""
        self._open()
        name = _table_name(table)
        if not self.exists(name):
            raise WarehouseError(f"drop: no table {name} in the warehouse", table=name)
        change = self.pending.get(name)
        for old in (change.staged if change is not None else ()):
            self.fs.delete(f"{self.staging}/{name}/{old}")
        self.pending[name] = _Pending(columns=None)

    def journal(self) -> dict[str, Any]:
        """What commit writes: per table, the renames to make and its new _table.json."""
        tables: dict[str, Any] = {}
        for name, change in sorted(self.pending.items()):
            existing = self.warehouse._partition_dirs(name)
            if change.columns is None:
                if self.warehouse.exists(name):
                    tables[name] = {"action": "drop"}
                continue
            version = self.warehouse.version(name) + 1 if self.warehouse.exists(name) else 1
            place = sorted(change.staged)
            remove = sorted(set(existing) - set(place)) if change.whole else []
            tables[name] = {"action": "put", "place": place, "remove": remove,
                            "columns": [list(c) for c in change.columns],
                            "partitioned_by": MONTH if any(n == MONTH for n, _ in change.columns) else None,
                            "version": version}
        return {"run_id": self.run_id, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "tables": tables}

    def commit(self) -> None:
        """Write the journal (temp file + rename: the commit point), then publish it. A failure before
        the commit point leaves the previous state and removes this transaction's traces; after it,
        the next ``Warehouse(...)`` (or ``recover()``) finishes the publish."""
        self._open()
        journal = self.journal()
        final = self.warehouse._journal_uri(self.run_id)
        partial = f"{final}.partial"
        try:
            fault("warehouse_before_journal")
            if journal["tables"]:
                self.fs.write_text(partial, json.dumps(journal, ensure_ascii=False, indent=1) + "\n")
                fault("warehouse_journal")
                self.fs.rename(partial, final)
        except BaseException:
            self._close("rolled back")
            self.fs.delete(partial)
            self.fs.delete(self.staging)
            raise
        self._close("committed")
        if not journal["tables"]:
            self.fs.delete(self.staging)
            return
        fault("warehouse_after_journal")
        self.warehouse._publish(self.run_id, journal)

    def rollback(self) -> None:
        """Forget this transaction: its staging goes; the warehouse is as before ``begin``."""
        if self.state == "committed":
            raise WarehouseError(f"warehouse transaction {self.run_id} is committed: it cannot be rolled back")
        self._close("rolled back")
        self.fs.delete(self.staging)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self.state != "open":
            return
        if kind is None:
            self.commit()
        else:
            self.rollback()

