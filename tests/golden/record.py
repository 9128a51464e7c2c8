"""Record the golden files: ``python tests/golden/record.py [CASE ...]`` (see cases.py).

Runs every case with one torch thread and copies its result files into tests/golden/<case>/.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import (
    EXPORTS,
    HERE,
    RESULT_FILES,
    WEIGHTS,
    cases,
    export_argv,
    export_metrics,
    identity,
)  # noqa: E402


def run_case(argv: list[str], out: Path) -> None:
    from moprune.cli.main import main

    status = main([str(out) if a == "OUT" else a for a in argv])
    if status != 0:
        raise SystemExit(f"case failed with status {status}: {argv}")


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        weights = WEIGHTS
        wanted = sys.argv[1:] or list(cases(weights))
        for name, argv in cases(weights).items():
            if name not in wanted:
                continue
            out = Path(tmp) / name
            run_case(argv, out)
            dest = HERE / name
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for f in RESULT_FILES:
                if (out / f).is_file():
                    shutil.copyfile(out / f, dest / f)
            (dest / "identity.json").write_text(
                json.dumps(identity(out), indent=2, sort_keys=True) + "\n")
            for case, label, extra in EXPORTS:
                if case != name:
                    continue
                target = Path(tmp) / f"{name}-{label}" / ("models" if "--elites" in extra
                                                          else "model.pt")
                run_case(export_argv(out, target, extra), target)
                (dest / f"export_{label}.json").write_text(
                    json.dumps(export_metrics(target), indent=2, sort_keys=True) + "\n")
            print(f"recorded {name}: {sorted(p.name for p in dest.iterdir())}")


if __name__ == "__main__":
    main()
