"""``python -m mktool``: the CLI, with a Ctrl-C during its imports reported like any other.

Importing the CLI (typer, rich, DuckDB) takes a noticeable part of a second; a Ctrl-C then
would otherwise print a KeyboardInterrupt traceback and kill Python by signal, or worse: DuckDB's
native module aborts the process ("Critical nanobind error", SIGABRT) when the KeyboardInterrupt
is raised while it defines its enums. Nothing can have been committed before the CLI was even
imported, so a Ctrl-C then ends mktool at once, from its own handler, without an exception.
"""

import os
import signal
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file, not with -m: spark-submit takes a .py path (docs/spark.md, "spark-submit"), and
    # Python then puts mktool's own folder first on sys.path, where mktool/profile.py would shadow the
    # standard library's profile (which cProfile, and so PySpark, imports). The folder above it goes
    # there instead, so that `import mktool` finds this very copy.
    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

#: mktool.errors.EXIT_INTERRUPTED, written out: importing it is already inside the window a
#: Ctrl-C may hit (tests/test_probe_outputs.py checks the two agree).
EXIT_INTERRUPTED = 130


def _interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a Ctrl-C, or an error raised because of one: Python 3.11 turns a
    KeyboardInterrupt inside a class body's ``__set_name__`` (a dataclass being defined while a
    module imports) into ``RuntimeError: Error calling __set_name__ …`` caused by it."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _end_at_once(signum: int, frame: object) -> None:
    """The SIGINT handler while the CLI imports: say so and end, raising nothing that a native
    module's initialisation could turn into an abort. Nothing is open for writing yet."""
    os.write(2, b"Interrupted; nothing was committed.\n")
    os._exit(EXIT_INTERRUPTED)


def main() -> None:
    # Only where Python's own Ctrl-C handling is in place: a process started with SIGINT ignored
    # (``cmd &`` from a script, nohup) must stay deaf to it.
    guarded = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if guarded:
        signal.signal(signal.SIGINT, _end_at_once)
    try:
        from mktool.cli import main as cli_main  # noqa: PLC0415 - the Ctrl-C guard must cover importing the CLI
    except BaseException as exc:
        # Still an interrupt raised by hand (or a guard that could not be installed): the same line.
        if not _interrupted(exc):
            raise
        sys.stderr.write("Interrupted; nothing was committed.\n")
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if guarded:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    main()
