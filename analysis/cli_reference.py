"""Regenerate the option reference of docs/cli.md from ``moprune COMMAND --help``.

    python analysis/cli_reference.py            # rewrite the section
    python analysis/cli_reference.py --check    # exit 1 if it is out of date

``tests/docs/test_cli_reference.py`` runs the check, so the reference stays true to the code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADING = "## Option reference"
COMMANDS = ("search", "plot", "pick", "export", "repair", "inspect", "finetune", "demo",
            "evolve")


def reference() -> str:
    """The option reference section, generated from the parser with 100 columns."""
    os.environ["COLUMNS"] = "100"
    from moprune.cli.main import build_parser

    parser = build_parser()
    parts = [f"{HEADING}\n\nGenerated from `COLUMNS=100 moprune COMMAND --help` by "
             "`python analysis/cli_reference.py`.\n"]
    for command in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parser.parse_args([command, "--help"])
        parts.append(f"### moprune {command}\n\n```\n{out.getvalue().rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--check", action="store_true", help="only check, do not write")
    check = args.parse_args().check
    text = DOC.read_text()
    head = text[:text.index(HEADING)]
    new = head + reference()
    if check:
        if new != text:
            print(f"{DOC} is out of date: run python analysis/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
