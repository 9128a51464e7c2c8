"""The runnable examples under docs/examples/ must keep working (they are quoted in the docs)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.mark.parametrize("name", ["torchvision_problem.py"])
def test_docs_example_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / name
    assert path.is_file(), f"missing docs example {path}"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "knee: kept" in out
    assert "SMS-EMOA" in out
