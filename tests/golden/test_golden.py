"""Golden files: every method's results for fixed seeds, byte for byte as before the restructuring.

``tests/golden/record.py`` recorded them (see ``tests/golden/cases.py``). A failure here means
a change altered what a search computes; re-record only when that is the intent, and say so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from moprune.cli.main import main

GOLDEN = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN))
from cases import (  # noqa: E402
    EXPORTS,
    RESULT_FILES,
    WEIGHTS,
    canonical,
    cases,
    export_argv,
    export_metrics,
    identity,
)  # noqa: E402

CASES = sorted(cases(Path("WEIGHTS")))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", CASES)
def test_same_result_files_as_recorded(name, tmp_path, one_thread):
    argv = cases(WEIGHTS)[name]
    out = tmp_path / name
    assert main([str(out) if a == "OUT" else a for a in argv]) == 0
    expected = GOLDEN / name
    recorded = sorted(f for f in RESULT_FILES if (expected / f).is_file())
    produced = sorted(f for f in RESULT_FILES if (out / f).is_file())
    assert produced == recorded
    for f in recorded:
        assert canonical(out / f) == canonical(expected / f), f"{name}/{f} differs"
    stored = json.loads((expected / "identity.json").read_text())
    assert identity(out) == stored
    for case, label, extra in EXPORTS:
        if case != name:
            continue
        target = tmp_path / label / ("models" if "--elites" in extra else "model.pt")
        assert main(export_argv(out, target, extra)) == 0
        recorded_export = json.loads((expected / f"export_{label}.json").read_text())
        assert export_metrics(target) == recorded_export, f"{name}: export {label} differs"
