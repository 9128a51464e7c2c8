"""The three trade-off models of a run (heavy, knee, light): exported together, compared.

DeepPruningES returns three networks: the most accurate member of the front (*heavy*), the
cheapest (*light*) and the *knee*. :func:`export_trade_offs` exports the three of any run
(the knee by the run's definition, see :meth:`moprune.methods.base.Method.knee`), optionally
retrains them (the published final recipe is
:func:`moprune.evaluation.retraining.final_recipe`), and writes a table and a plot of the
three against the baseline and the whole front.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from moprune.core.execution import Execution
from moprune.errors import ConfigError
from moprune.fronts import ROLES, format_table, plot_trade_offs
from moprune.methods.base import Method
from moprune.runs.export import export_candidate
from moprune.runs.rundir import RunDir, atomic_write_json
from moprune.tasks.setup import SearchSetup
from moprune.training.finetune import FinetuneConfig

ORDER = ("heavy", "knee", "light")
TABLE_COLUMNS = (
    ("model", "model", ""), ("id", "id", "d"), ("macs", "MACs", ",d"),
    ("macs_reduction", "MACs red.", ".1%"), ("params", "params", ",d"),
    ("params_reduction", "params red.", ".1%"),
    ("search_val_accuracy", "hold-out (search)", ".2%"),
    ("front_test_accuracy", "test (search)", ".2%"),
    ("val_accuracy", "hold-out (exported)", ".2%"),
    ("test_accuracy", "test (exported)", ".2%"),
)


def resolve_role(run: RunDir, method: Method, role: str) -> dict:
    """The front member playing ``role`` (heavy, light or knee) in ``run``."""
    if role not in ROLES:
        raise ConfigError(f"unknown trade-off role {role!r}; valid: {', '.join(ROLES)}")
    return method.trade_offs(run)[role]


def _row(role: str, record: dict, metrics: dict, baseline: dict) -> dict:
    return {"model": role, "id": record["id"], "macs": metrics["macs"],
            "macs_reduction": 1 - metrics["macs"] / baseline["macs"], "params": metrics["params"],
            "params_reduction": 1 - metrics["params"] / baseline["params"],
            "search_val_accuracy": record["val_accuracy"],
            "front_test_accuracy": record.get("test_accuracy"),
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"]}


def trade_offs_table(exported: dict[str, dict], baseline: dict, markdown: bool = False) -> str:
    """Baseline and the exported models: cost, search accuracy and exported accuracy."""
    rows = [{"model": "baseline", "macs": baseline["macs"], "macs_reduction": 0.0,
             "params": baseline["params"], "params_reduction": 0.0,
             "search_val_accuracy": baseline["val_accuracy"],
             "front_test_accuracy": baseline.get("test_accuracy"),
             "val_accuracy": baseline["val_accuracy"],
             "test_accuracy": baseline.get("test_accuracy")}]
    rows += [_row(role, e["record"], e["metrics"], baseline) for role, e in exported.items()]
    return format_table(rows, TABLE_COLUMNS, markdown=markdown)


def export_trade_offs(setup: SearchSetup, run: RunDir, method: Method, out_dir: Path,
                      finetune_epochs: int, recipe: FinetuneConfig, seed: int,
                      device: str | torch.device, progress: bool = True, start: str = "scored",
                      execution: Execution | None = None) -> dict[str, dict]:
    """Export the heavy, knee and light members of ``run`` into ``out_dir``.

    Writes ``{heavy,knee,light}.pt`` (see :func:`moprune.runs.export.export_candidate`),
    ``elites.json`` (records and measured metrics), ``elites.md`` (the table) and
    ``elites.{png,svg}`` (the three against the baseline and the front). A member playing
    two roles is exported (and retrained) once. ``execution`` is the fine-tuning's.

    Returns:
        ``{role: {"record": ..., "metrics": ...}}`` in the order heavy, knee, light.

    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = run.config()
    front = run.front()
    knee_method, weights = method.knee(config["identity"])
    models = method.trade_offs(run)
    exported: dict[str, dict] = {}
    done: dict[int, tuple[Path, dict]] = {}
    for role in ORDER:
        record = models[role]
        path = out_dir / f"{role}.pt"
        finished = _finished(path, record, finetune_epochs, recipe, start)
        if record["id"] in done:
            first, metrics = done[record["id"]]
            shutil.copyfile(first, path)
        elif finished is not None:  # an earlier, interrupted --elites export wrote it
            metrics = finished
            done[record["id"]] = (path, metrics)
            if progress:
                print(f"{role}: candidate {record['id']} already exported to {path}")
        else:
            if progress:
                print(f"{role}: candidate {record['id']}")
            metrics = export_candidate(setup, record, path, finetune_epochs=finetune_epochs,
                                       seed=seed, device=device, progress=progress,
                                       finetune_config=recipe,
                                       model=method.start_model(setup, run, record, start,
                                                                seed),
                                       start=start, execution=execution)
            done[record["id"]] = (path, metrics)
        exported[role] = {"record": record, "metrics": metrics}
    baseline = run.baseline()
    run_json = {"knee_method": knee_method,
                "knee_weights": None if weights is None else list(weights),
                "finetune_epochs": finetune_epochs, "models": exported}
    atomic_write_json(out_dir / "elites.json", _plain(run_json))
    table = trade_offs_table(exported, baseline, markdown=True)
    retrained = (f"after {finetune_epochs} epoch(s) of final retraining (lr {recipe.lr}, "
                 f"{recipe.schedule} schedule)" if finetune_epochs else "without retraining")
    note = ("Accuracies on the hold-out split (used for selection) and on the test split "
            "(reported only). `search`: as scored in the search; `exported`: the saved network "
            f"{retrained}. The unpruned network is the baseline, not one of the models.")
    (out_dir / "elites.md").write_text(f"# Trade-off models of {run.path}\n\n{table}\n\n{note}\n")
    plot_trade_offs(front, baseline, {r: (e["record"], e["metrics"]) for r, e in exported.items()},
                    out_dir / "elites", title=config.get("title"))
    return exported


def _finished(path: Path, record: dict, finetune_epochs: int, recipe: FinetuneConfig,
              start: str) -> dict | None:
    """Metrics of ``path`` if it already holds this record exported the same way, else None."""
    if not path.is_file():
        return None
    try:
        metrics = torch.load(path, map_location="cpu", weights_only=False)["metrics"]
    except Exception:  # noqa: BLE001 - unreadable: export it again
        return None
    same = (metrics.get("id") == record["id"] and metrics.get("start") == start
            and metrics.get("finetune_epochs") == finetune_epochs
            and (finetune_epochs == 0
                 or metrics.get("finetune_config") == dataclasses.asdict(
                     dataclasses.replace(recipe, epochs=finetune_epochs))))
    return metrics if same else None


def _plain(obj: object) -> object:
    """JSON-ready copy (numpy scalars to Python numbers)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


__all__ = ["export_trade_offs", "resolve_role", "trade_offs_table"]
