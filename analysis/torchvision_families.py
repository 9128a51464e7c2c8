"""The supported torchvision families: their pruning spaces and the MACs left at 50 % kept.

    python analysis/torchvision_families.py                 # print the Markdown tables
    python analysis/torchvision_families.py --write         # and replace them in docs/models.md
    python analysis/torchvision_families.py --size 64       # at another input size

For every family of ``moprune.zoo.families.FAMILIES`` (random weights, ``num_classes=1000``,
one input of SIZE x SIZE), both space policies are built (each with its gated == sliced
self-check), and the analytic cost model gives the MACs of the plan that keeps half of every
group's units (rounded up) as a share of the unpruned network's MACs. Every count is exact:
tests/zoo/test_torchvision_families.py checks cost == thop on each family.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from moprune.core.cost import CostModel
from moprune.core.layers import LAYER_RULES
from moprune.core.space import PruningSpace, SpacePolicy
from moprune.zoo.families import FAMILIES, REFUSED
from moprune.zoo.models import build_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
BEGIN, END = "<!-- families:begin -->", "<!-- families:end -->"


def half_kept_ratio(space: PruningSpace, cost: CostModel) -> float:
    """MACs of the plan keeping ceil(50 %) of every group's units, over the full MACs."""
    mask = np.zeros(space.n_channels, dtype=bool)
    for g in range(space.n_groups):
        start, size = int(space.offsets[g]), int(space.sizes[g])
        mask[start:start + size - size // 2] = True
    return float(cost.cost_of_masks(mask[None]).macs[0] / cost.base.macs[0])


def family_row(name: str, size: int) -> dict[str, str]:
    torch.manual_seed(0)
    model = build_model(f"tv:{name}", num_classes=1000).eval()
    shape = (3, size, size)
    start = time.perf_counter()
    row: dict[str, str] = {"family": f"`{name}`", "GMACs": "", "layer kinds": ""}
    for label, residual in (("internal", False), ("residual", True)):
        space = PruningSpace.from_model(model, shape, SpacePolicy(residual=residual))
        cost = CostModel(space, model)
        tied = sum(1 for g in space.groups if g.units)
        row[f"{label} groups"] = f"{space.n_groups}" + (f" ({tied} tied)" if tied else "")
        row[f"{label} units"] = f"{space.n_channels:,}"
        row[f"{label} MACs at 50 %"] = f"{half_kept_ratio(space, cost):.3f}"
        if not residual:
            row["GMACs"] = f"{cost.base.macs[0] / 1e9:.2f}"
            kinds = sorted({info.kind for info in space.layers.values()
                            if LAYER_RULES.get(info.kind).channels or info.kind == "identity"})
            row["layer kinds"] = ", ".join(kinds)
    print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return row


def table(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    args = parser.parse_args()
    rows = [family_row(name, args.size) for name in FAMILIES]
    refused = "\n".join(f"- `{name}`: refused, {why}." for name, why in REFUSED.items())
    text = (f"Input {args.size}x{args.size}, 1000 classes, command: "
            f"`python analysis/torchvision_families.py --size {args.size} --write`.\n\n"
            f"{table(rows)}\n\n{refused}\n")
    print(text)
    if args.write:
        doc = DOC.read_text()
        head, rest = doc.split(BEGIN)
        _, tail = rest.split(END)
        DOC.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
