"""The demo: a small CNN on the embedded digits data, trained, searched, picked and exported.

The demo runs ``moprune search/pick/export`` on the digits problem file
(:mod:`moprune.tasks.digits`), so everything it does is what those commands do on any other
problem.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from moprune.fronts import PickRule, pick
from moprune.runs.rundir import RunDir, RunDirError
from moprune.tasks import digits
from moprune.tasks.digits import train_baseline

WEIGHTS = "baseline_weights.pt"
DEMO_FILES = (WEIGHTS, "knee.pt", "knee.pt.ckpt")  # what the demo writes besides its run


def _prepare(out: Path) -> None:
    """An empty ``out``: a previous demo there is removed, file by file; nothing else is."""
    run = RunDir(out)
    if run.exists():
        problem = Path(run.config()["identity"].get("problem", ""))
        if problem.name not in ("demo.py", "digits.py", "digits_demo.py"):
            raise RunDirError(f"{str(out)!r} holds a run that is not a demo; choose another --out")
        mine, foreign = run.owned(run.files() + list(DEMO_FILES))
        if foreign:
            raise RunDirError(f"{str(out)!r} holds a previous demo and files the demo did not "
                              f"write: {', '.join(foreign[:8])}; moprune never deletes files it "
                              "did not write. Move them away or choose another --out.")
        for p in mine:
            p.unlink()
        for d in sorted({p.parent for p in mine if p.parent != out}, reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        print(f"replaced the previous demo in {out}: removed its {len(mine)} file(s)")
    elif out.exists() and any(out.iterdir()):
        raise RunDirError(f"{str(out)!r} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def run_demo(out: Path, command: Callable[[list[str]], int], seed: int = 0,
             progress: bool = True) -> int:
    """Train, search (NSGA-II on filter masks), pick the knee, export it; print a summary.

    ``command`` runs a ``moprune`` command line (``moprune.cli.main.main``).
    """
    start = time.perf_counter()
    out = Path(out)
    _prepare(out)
    weights = out / WEIGHTS
    print("1/4 training the digits CNN (embedded data, CPU) ...")
    acc = train_baseline(weights, seed, progress)
    print(f"    hold-out accuracy {acc:.2%}; saved {weights}")
    quiet = [] if progress else ["--quiet"]
    print("2/4 NSGA-II filter-mask search ...")
    status = command(["search", digits.__file__, "--weights", str(weights), "--pop-size", "24",
                      "--generations", "25", "--seed", str(seed), "--eval-images", "288",
                      "--out", str(out), *quiet])
    if status:
        return status
    run = RunDir(out)
    knee = pick(run.front(), run.baseline(), PickRule("knee"),
                tuple(run.config()["identity"]["objectives"]))
    print(f"3/4 knee of the front: candidate {knee['id']}")
    print("4/4 exporting the knee as a physically pruned network (5 fine-tuning epochs) ...")
    status = command(["export", str(out), "--id", str(knee["id"]), "--out",
                      str(out / "knee.pt"), "--finetune-epochs", "5", *quiet])
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; front plot: "
          f"{out / 'plots' / 'front.png'}, model: {out / 'knee.pt'}")
    return status
