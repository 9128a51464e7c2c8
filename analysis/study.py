"""Shared driver of the study scripts that search, export the three trade-off models, report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from moprune.cli.main import main as moprune
from moprune.methods.rebuild import method_of
from moprune.methods.tradeoffs import resolve_role
from moprune.runs.rundir import RunDir

ROLES = ("heavy", "knee", "light")


def exported_summary(out: Path, final_epochs: int) -> dict | None:
    """``OUT/elites/elites.json`` if it is for ``final_epochs`` and the run's current models."""
    path = out / "elites" / "elites.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    run = RunDir(out)
    current = {role: resolve_role(run, method_of(run.config()), role)["id"] for role in ROLES}
    exported = {role: summary["models"][role]["record"]["id"] for role in ROLES}
    return summary if (summary["finetune_epochs"] == final_epochs
                       and exported == current) else None


def search_export_report(out: Path, final_epochs: int, search: list[str], export: list[str],
                         report: Callable[[dict, float], str]) -> int:
    """Search (unless finished: a resumed finished search would redo its test measurements),
    export ``--elites`` (unless already done for this budget), then print the report."""
    start = time.perf_counter()
    status = 0 if (out / "front.json").exists() else moprune(search)
    if status != 0 or not (out / "front.json").exists():
        print("the search did not finish; run the same command again to resume it")
        return status or 1
    summary = exported_summary(out, final_epochs)
    if summary is None:
        status = moprune(export)
        if status != 0:
            return status
        summary = exported_summary(out, final_epochs)
    assert summary is not None
    print(report(summary, time.perf_counter() - start))
    return 0
