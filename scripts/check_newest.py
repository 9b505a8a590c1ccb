#!/usr/bin/env python3
"""Install the newest releases pyproject.toml's ranges allow, and run the regression with them.

CI installs the exact set in constraints.txt, so CI is reproducible; but a new user's
``pip install`` resolves the newest releases within the ranges, and the day one of them changes
a result (DuckDB 2.0.1 rounded a DOUBLE differently from 2.0.0) every new machine goes red
while CI stays green. This script is the second check that finds such a drift first:

1. a fresh virtual environment in a temporary folder, ``pip install --upgrade`` of this
   checkout with its ``test``, ``lint`` and ``spark`` extras and no constraints (what a new user
   gets; CI has Java, so the suite there runs the Spark tests on the newest PySpark too);
2. the releases that differ from constraints.txt are listed (library: locked → newest);
   when none differ, the locked run of CI already covered them and the script stops here;
3. otherwise the test suite, ``mktool test --strict``, ``mktool snapshot --check``, ``ruff check``
   and ``mypy`` run in that environment; a failure names the step and every library that moved.

``--write-constraints`` records the new set in constraints.txt after the checks pass (the way to
take a tested upgrade). ``.ci/run`` calls this script after the locked run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
HEADER = ("# The exact releases CI installs (.ci/run: pip install -c constraints.txt -e \".[test,lint,spark]\").\n"
          "# Regenerate after a tested upgrade: python scripts/check_newest.py --write-constraints\n")


def log(message: str) -> None:
    print(f"check_newest: {message}", file=sys.stderr, flush=True)


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines → {normalised name: version}; comments and editable lines skipped."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def run(cmd: list[str], *, env: dict[str, str], what: str) -> None:
    log(f"{what}: {' '.join(cmd)}")
    done = subprocess.run(cmd, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise StepFailed(what, done.returncode)


class StepFailed(Exception):
    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} exited {code}")
        self.what = what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-constraints", action="store_true",
                        help="after the checks pass, record the newest set in constraints.txt")
    parser.add_argument("--always", action="store_true",
                        help="run the checks even when the newest releases are the locked ones")
    parser.add_argument("--keep", type=Path, help="build the environment in this folder and keep it")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mktool-newest-") as tmp:
        venv = args.keep or Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_CONSTRAINT")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
        quiet = ["--quiet", "--disable-pip-version-check"]
        run([py, "-m", "pip", "install", *quiet, "--upgrade", "pip"], env=env, what="upgrading pip")
        # Not editable: the way a user installs it, so packaging (the shipped matrices) is checked too.
        # The spark extra too: a PySpark release within its range is a drift like any other, and so is
        # a sqlglot that renders Spark SQL differently: on any drift the Spark parity suite runs too.
        run([py, "-m", "pip", "install", *quiet, "--upgrade", "--upgrade-strategy", "eager",
             f"{ROOT}[test,lint,spark]"], env=env, what="installing the newest releases the ranges allow")
        frozen = subprocess.run([py, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                                check=True, env=env).stdout
        newest = {k: v for k, v in read_pins(frozen).items() if k != "mktool"}
        locked = read_pins(CONSTRAINTS.read_text(encoding="utf-8")) if CONSTRAINTS.exists() else {}
        moved = [f"{name} {locked.get(name, '(not locked)')} → {version}"
                 for name, version in sorted(newest.items()) if locked.get(name) != version]
        moved += [f"{name} {version} → (no longer installed)" for name, version in sorted(locked.items())
                  if name not in newest]
        if not moved and not args.always:
            log("the newest releases within the ranges are the locked ones (constraints.txt); "
                "the locked run covered them")
            return 0
        log("newer than constraints.txt: " + ("; ".join(moved) if moved else "nothing (--always)"))
        try:
            # the whole suite but Spark: the `slow` sweeps too (the reference comparisons are where a
            # changed engine result shows)
            run([py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not spark"], env=env,
                what="the test suite")
            run([py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "spark", "-n", "0"], env=env,
                what="the Spark parity suite")
            run([str(venv / "bin" / "mktool"), "test", "--strict", "--quiet"], env=env, what="mktool test --strict")
            run([str(venv / "bin" / "mktool"), "snapshot", "--check"], env=env, what="mktool snapshot --check")
            run([str(venv / "bin" / "ruff"), "check", "--quiet", "."], env=env, what="ruff check")
            run([str(venv / "bin" / "mypy")], env=env, what="mypy")
        except StepFailed as exc:
            print(f"Error: with the newest releases pyproject.toml allows, {exc.what} fails.\n"
                  f"  newer than constraints.txt: {'; '.join(moved) or 'nothing'}\n"
                  f"  hint: make the code right for them, or bound the range in pyproject.toml below the "
                  f"release that breaks it; constraints.txt keeps CI's locked run green meanwhile",
                  file=sys.stderr)
            return 1
        if args.write_constraints:
            CONSTRAINTS.write_text(HEADER + "".join(f"{line}\n" for line in frozen.splitlines()
                                                    if line and not line.lower().startswith("mktool")),
                                   encoding="utf-8")
            log(f"wrote {CONSTRAINTS.name}")
    log(f"newest releases pass ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
