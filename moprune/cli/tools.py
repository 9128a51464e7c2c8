"""``moprune inspect``, ``finetune`` and ``demo``."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from moprune.cli.common import execution_of, task_options
from moprune.core.cost import CostModel
from moprune.core.execution import resolve_device
from moprune.core.space import PruningSpace
from moprune.fronts import format_table
from moprune.tasks.task import DataRequest, load_problem_file
from moprune.training.finetune import evaluate_accuracy, finetune


def cmd_inspect(args: argparse.Namespace) -> int:
    task = load_problem_file(args.problem, task_options(args.weights))
    policy = task.policy
    if args.residual:
        policy = dataclasses.replace(policy, residual=True)
    space = PruningSpace.from_model(task.model, task.input_shape, policy)
    cost = CostModel(space, task.model)
    shares = cost.share_of_macs()
    rows = [{"i": g.index, "name": g.name,
             "channels": str(g.size) if not g.units else f"{g.size} x {g.channels // g.size}",
             "kind": "residual" if g.residual else "internal", "share": shares[g.index]}
            for g in space.groups]
    print(f"{task.name}: {task.description}")
    print(f"input {task.input_shape}; {space}; MACs {int(cost.base.macs[0]):,} per image "
          f"(FLOPs = 2 x MACs), params {int(cost.base.params[0]):,}")
    print(format_table(rows, (("i", "#", "d"), ("name", "group (root layer)", ""),
                              ("channels", "channels", ""), ("kind", "kind", ""),
                              ("share", "share of MACs", ".2%"))))
    print("share of MACs: the part of the network's MACs that scales with the group's width")
    if any(g.units for g in space.groups):
        print("channels 'U x G': U units of G channels tied across the groups of a grouped "
              "convolution or GroupNorm (pruned together)")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    task = load_problem_file(args.problem, task_options(args.weights))
    data = task.load_data(DataRequest(root=args.data_root, seed=args.seed, load_train=True,
                                      download=args.download))
    cfg = dataclasses.replace(task.finetune, epochs=args.epochs)
    if args.lr is not None:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    model = task.model.to(device)
    before, _ = evaluate_accuracy(model, data.val, data.normalization, device=device)
    finetune(model, data.train, data.normalization, cfg,
             generator=torch.Generator().manual_seed(args.seed), device=device, val=data.val,
             progress=not args.quiet, execution=execution_of(args))
    after, _ = evaluate_accuracy(model, data.val, data.normalization, device=device)
    test, _ = evaluate_accuracy(model, data.test, data.normalization, device=device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.cpu().state_dict(), "val_accuracy": after,
                "test_accuracy": test, "seed": args.seed,
                "finetune_config": dataclasses.asdict(cfg)}, args.out)
    print(f"hold-out accuracy {before:.2%} -> {after:.2%}; test accuracy {test:.2%}; "
          f"saved {args.out} (use it with --weights)")
    return 0


__all__ = ["cmd_finetune", "cmd_inspect"]
