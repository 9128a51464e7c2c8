"""The golden-file cases: one small CLI run per method and problem, and how to compare them.

``record.py`` ran these on the code before the package was restructured and stored each
run's result files under ``tests/golden/<case>/``; ``tests/test_golden.py`` runs them again and
requires the same bytes. Fields that measure wall-clock time are dropped before comparing.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DIGITS = REPO / "problems" / "digits_demo.py"
DIGITS_RATIO = HERE / "digits_ratio.py"
TINY_RESNET = HERE / "tiny_resnet.py"
# the digits CNN trained by moprune.tasks.digits.train_baseline(seed=0) with one torch thread
WEIGHTS = HERE / "digits_weights.pt"

# result files compared byte for byte (when present); config.json holds paths and versions
RESULT_FILES = ("front.json", "candidates.jsonl", "baseline.json", "progress.json",
                "elites.jsonl", "coevolution.jsonl", "gp.jsonl", "best.gp.json")
# wall-clock measurements, different on every run
TIMING_KEYS = frozenset({"search_seconds", "finetune_seconds", "seconds", "time", "elapsed",
                         "wall_seconds"})
SMALL = ["--eval-images", "64", "--test-images", "64", "--quiet"]


def cases(weights: Path) -> dict[str, list[str]]:
    """``{case: argv}`` of ``moprune`` runs; ``OUT`` in an argv is the case's run directory."""
    w = ["--weights", str(weights)]
    digits = [str(DIGITS), *w, *SMALL]
    resnet = [str(TINY_RESNET), *SMALL]
    return {
        "nsga2_digits_mask": ["search", *digits, "--pop-size", "8", "--generations", "3",
                              "--seed", "3", "--out", "OUT"],
        "nsga2_digits_ratio": ["search", str(DIGITS_RATIO), *w, *SMALL, "--pop-size", "8",
                               "--generations", "3", "--seed", "1", "--out", "OUT"],
        "nsga2_resnet_mask": ["search", *resnet, "--pop-size", "8", "--generations", "3",
                              "--out", "OUT"],
        "nsga2_resnet_residual": ["search", *resnet, "--pop-size", "6", "--generations", "3",
                                  "--residual", "--max-macs-ratio", "0.9",
                                  "--max-accuracy-drop", "0.5", "--out", "OUT"],
        "nsga2_digits_partial": ["search", *digits, "--pop-size", "4", "--generations", "2",
                                 "--partial-epochs", "1", "--train-images", "100",
                                 "--out", "OUT"],
        "ccep_digits": ["search", *digits, "--algorithm", "ccep", "--rounds", "2",
                        "--finetune-epochs", "1", "--pop-size", "3", "--generations", "2",
                        "--train-images", "100", "--out", "OUT"],
        "ccep_resnet": ["search", *resnet, "--algorithm", "ccep", "--rounds", "2",
                        "--finetune-epochs", "1", "--pop-size", "3", "--generations", "2",
                        "--group-objectives", "multi", "--out", "OUT"],
        "deeppruninges_digits": ["search", *digits, "--algorithm", "deeppruninges",
                                 "--pop-size", "6", "--generations", "3", "--partial-epochs",
                                 "1", "--train-images", "100", "--out", "OUT"],
        "deeppruninges_resnet": ["search", *resnet, "--algorithm", "deeppruninges",
                                 "--pop-size", "5", "--generations", "3", "--partial-epochs",
                                 "0", "--knee-method", "line", "--out", "OUT"],
        "evofc_digits_inherit": ["search", *digits, "--algorithm", "evofc", "--pop-size", "4",
                                 "--generations", "2", "--search-epochs", "1",
                                 "--train-images", "100", "--out", "OUT"],
        "evofc_digits_scratch_mixed": ["search", *digits, "--algorithm", "evofc",
                                       "--pop-size", "3", "--generations", "2",
                                       "--training", "scratch", "--variables", "mixed",
                                       "--search-epochs", "1", "--train-images", "60",
                                       "--out", "OUT"],
        "evofc_resnet_pretrained": ["search", *resnet, "--algorithm", "evofc", "--init",
                                    "pretrained", "--training", "none", "--pop-size", "4",
                                    "--generations", "2", "--lower-bounds", "stages:0.1,0.2,0.3",
                                    "--out", "OUT"],
        "gp_evolve_digits": ["evolve", "--out", "OUT", "--pop-size", "4", "--generations", "2",
                             "--elites", "1", "--eval-images", "96", "--train-images", "200",
                             "--batch-images", "64", "--quiet"],
    }


# exports of a finished case: (case, export name, extra argv); RUN and OUT are filled in
EXPORTS = (
    ("nsga2_digits_mask", "knee_ft1", ["--id", "knee", "--finetune-epochs", "1"]),
    ("nsga2_digits_ratio", "light", ["--id", "light"]),
    ("nsga2_digits_partial", "heavy", ["--id", "heavy"]),
    ("ccep_digits", "round2", ["--id", "2"]),
    ("deeppruninges_digits", "elites", ["--elites"]),
    ("evofc_digits_inherit", "knee", ["--id", "knee"]),
    ("evofc_digits_scratch_mixed", "knee_scratch", ["--id", "knee", "--start", "scratch",
                                                    "--finetune-epochs", "1"]),
    ("nsga2_resnet_mask", "knee_fast", ["--id", "knee", "--finetune-epochs", "1",
                                        "--recipe", "fast"]),
)


def export_argv(run: Path, out: Path, extra: list[str]) -> list[str]:
    """``moprune export`` of a finished golden run."""
    return ["export", str(run), "--out", str(out), "--quiet", *extra]


def export_metrics(out: Path) -> dict:
    """What an export wrote, comparable across runs: metrics (and plans) of every model."""
    import torch

    files = sorted(out.glob("*.pt")) if out.is_dir() else [out]
    result = {}
    for f in files:
        payload = torch.load(f, map_location="cpu", weights_only=False)
        result[f.stem] = strip_timing({"metrics": payload["metrics"], "plan": payload["plan"],
                                       "genome": payload["genome"], "id": payload["id"]})
    return json.loads(json.dumps(result, sort_keys=True))


def strip_timing(obj: object) -> object:
    """``obj`` without the keys in :data:`TIMING_KEYS` (at any depth)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def canonical(path: Path) -> bytes:
    """The file's bytes, with timing keys removed (JSON re-dumped the way runs write it)."""
    raw = path.read_bytes()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in raw.decode().splitlines() if line]
        if not any(_has_timing(r) for r in rows):
            return raw
        return "".join(json.dumps(strip_timing(r), sort_keys=True) + "\n" for r in rows).encode()
    obj = json.loads(raw)
    if not _has_timing(obj):
        return raw
    return (json.dumps(strip_timing(obj), indent=2, sort_keys=True) + "\n").encode()


def _has_timing(obj: object) -> bool:
    if isinstance(obj, dict):
        return bool(TIMING_KEYS & obj.keys()) or any(_has_timing(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_timing(v) for v in obj)
    return False


def identity(run: Path) -> dict:
    """The run identity of config.json without machine-specific paths and hashes."""
    ident = json.loads((run / "config.json").read_text())["identity"]
    drop = {"problem", "problem_sha256", "weights", "weights_sha256", "data_root", "tasks"}
    return {k: v for k, v in ident.items() if k not in drop}
