"""`make chaos`: every chaos scenario, then docs/reliability.md; exits 1 when any check failed.

    python -m chaos.run [--short] [--keep]

Worker faults (chaos/workers.py) always run; the load and hostile-input scenarios run when their modules
(chaos/load.py, chaos/hostile.py, each with `run(short) -> Section`) are present.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from chaos import workers
from chaos.report import Section, write

REPORT = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
OPTIONAL = ("chaos.load", "chaos.hostile")


def _optional(name: str) -> Callable[[bool], Section] | None:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise
    runner: Callable[[bool], Section] = module.run
    return runner


def _crashed(title: str) -> Section:
    """A scenario that raised is a failed section, not a lost report."""
    section = Section(title)
    section.check("scenario ran to the end", False, traceback.format_exc().strip().splitlines()[-1])
    traceback.print_exc()
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the chaos scenarios and write docs/reliability.md.")
    parser.add_argument("--short", action="store_true", help="small versions (as in `make test`)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders and their logs")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    began = time.monotonic()
    sections: list[Section] = []
    try:
        sections += workers.run(args.short, keep=args.keep)
    except Exception:
        sections.append(_crashed("Worker faults"))
    for name in OPTIONAL:
        runner = _optional(name)
        if runner is None:
            continue
        print(f"chaos: {name}", flush=True)
        try:
            sections.append(runner(args.short))
        except Exception:
            sections.append(_crashed(name))
    command = "python -m chaos.run" + (" --short" if args.short else "")
    write(sections, args.report, command)
    failed = [(s.title, c.name) for s in sections for c in s.failures()]
    print(f"chaos: {len(sections)} sections in {time.monotonic() - began:.0f}s, report in {args.report}")
    for title, check in failed:
        print(f"chaos: FAILED {title}: {check}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
