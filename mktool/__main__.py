"""``python -m mktool``: the CLI, with a Ctrl-C during its imports reported like any other.

Importing the CLI (typer, rich, DuckDB) takes a noticeable part of a second; a Ctrl-C then
would otherwise print a KeyboardInterrupt traceback and kill Python by signal. Nothing can have
been committed before the CLI was even imported.
"""

import sys

#: mktool.errors.EXIT_INTERRUPTED, written out: importing it is already inside the window a
#: Ctrl-C may hit (tests/test_probe_outputs.py checks the two agree).
EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from mktool.cli import main as cli_main  # noqa: PLC0415 - a Ctrl-C while importing is caught here
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted; nothing was committed.\n")
        sys.exit(EXIT_INTERRUPTED)
    cli_main()


if __name__ == "__main__":
    main()
