"""docs/cli.md's option reference is what ``moprune COMMAND --help`` prints today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "analysis" / "cli_reference.py"


def test_the_option_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.DOC.read_text()
    assert text[text.index(module.HEADING):] == module.reference(), (
        "docs/cli.md's option reference is out of date: run python analysis/cli_reference.py")
