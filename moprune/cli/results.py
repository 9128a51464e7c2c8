"""``moprune plot``, ``pick`` and ``export``: look at a run's front, choose, export models."""

from __future__ import annotations

import argparse
import dataclasses
import json

from moprune.cli.common import execution_of
from moprune.core.execution import resolve_device
from moprune.core.objectives import OBJECTIVES
from moprune.errors import ConfigError
from moprune.fronts import PickRule, format_table, front_records, pick
from moprune.methods.driver import MEMBER_COLUMNS, member_row
from moprune.methods.rebuild import method_of, setup_from_run
from moprune.methods.repair import repair
from moprune.methods.tradeoffs import export_trade_offs, resolve_role, trade_offs_table
from moprune.runs.export import export_candidate
from moprune.runs.rundir import RunDir
from moprune.training.finetune import FinetuneConfig
from moprune.training.recipes import RECIPES


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_plot(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    config = run.config()
    run.check_readable("plot")
    for i in args.ids or []:
        run.record(i)  # an unknown id fails before anything is drawn
    with run.lock("moprune plot"):  # it writes RUN/plots
        for p in method_of(config).write_plots(run, args.ids):
            print(p)
    return 0


def _rule(args: argparse.Namespace, run: RunDir) -> PickRule:
    config = run.config()
    method = method_of(config)
    if args.knee:
        knee_method, weights = method.knee(config["identity"])
        if args.knee_method is not None or args.knee_weights is not None:
            knee_method, weights = args.knee_method or "distance", args.knee_weights
        return PickRule("knee", knee_method=knee_method, knee_weights=weights)
    if args.max_macs_ratio is not None:
        rule = PickRule("max_macs_ratio", args.max_macs_ratio)
    elif args.max is not None:
        name, _, value = args.max.partition("=")
        if name not in config["identity"]["objectives"]:
            raise ConfigError(f"--max {args.max}: {name!r} is not an objective of this run "
                              f"({', '.join(config['identity']['objectives'])}); write "
                              "OBJECTIVE=VALUE")
        try:
            bound = float(value)
        except ValueError:
            raise ConfigError(f"--max {args.max}: expected OBJECTIVE=NUMBER") from None
        rule = PickRule("max_objective", bound, objective=name)
    else:
        rule = PickRule("max_accuracy_drop", args.max_accuracy_drop)
    method.check_pick(config["identity"], rule)
    return rule


def cmd_pick(args: argparse.Namespace) -> int:
    if not args.knee and (args.knee_method is not None or args.knee_weights is not None):
        raise ConfigError("--knee-method and --knee-weights define the knee: use them with "
                          "--knee")
    run = RunDir(args.run)
    run.check_readable("pick from")
    front, baseline = run.front(), run.baseline()
    objectives = tuple(run.config()["identity"]["objectives"])
    if args.list:
        rows = [member_row("front", r, baseline) for r in front_records(front, objectives)]
        if args.json:
            print_json(front)
        else:
            print(format_table(rows, MEMBER_COLUMNS))
        return 0
    rule = _rule(args, run)
    chosen = pick(front, baseline, rule, objectives)
    if args.json:
        out = {k: chosen[k] for k in ("id", "macs", "params", "val_accuracy", "macs_ratio",
                                      "params_ratio", "generation", "genome")}
        out["test_accuracy"] = chosen.get("test_accuracy")
        out["flops"] = 2 * chosen["macs"]
        out["rule"] = rule.label
        out["objectives"] = {o: OBJECTIVES.get(o).value(chosen) for o in objectives}
        out["units"] = "MACs and FLOPs per image; accuracies are fractions"
        print_json(out)
    else:
        print(format_table([member_row("baseline", {**baseline, "id": None}, baseline),
                            member_row(rule.label, chosen, baseline)], MEMBER_COLUMNS))
    return 0


def _export_recipe(args: argparse.Namespace, task_recipe: FinetuneConfig) -> FinetuneConfig:
    cfg = RECIPES.get(args.recipe)(task_recipe, args.finetune_epochs)
    return cfg if args.lr is None else dataclasses.replace(cfg, lr=args.lr)


def cmd_export(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    config = run.config()
    run.check_readable("export from")
    method = method_of(config)
    if args.start == "scratch" and args.finetune_epochs == 0:
        raise ConfigError("--start scratch re-initialises the network: give --finetune-epochs "
                          "N > 0 to train it")
    if args.recipe != "task" and args.finetune_epochs == 0:
        raise ConfigError(f"--recipe {args.recipe} is a fine-tuning recipe: give "
                          "--finetune-epochs N > 0")
    if args.elites:
        if args.out.exists() and not args.out.is_dir():
            raise ConfigError(f"--elites writes three models and a table into a folder; "
                              f"{str(args.out)!r} is a file: pass a folder")
        run.front()  # an interrupted run fails here, before any data is loaded
    record = None if args.elites else (
        resolve_role(run, method, args.id) if isinstance(args.id, str) else run.record(args.id))
    device = args.device or config["device"]
    resolve_device(device)
    seed = config["identity"]["seed"]
    setup = setup_from_run(run, device=device, load_train=args.finetune_epochs > 0,
                           progress=not args.quiet)
    recipe = _export_recipe(args, setup.task.finetune)
    if args.elites:
        exported = export_trade_offs(setup, run, method, args.out, args.finetune_epochs,
                                     recipe, seed, device, progress=not args.quiet,
                                     start=args.start, execution=execution_of(args))
        print(trade_offs_table(exported, run.baseline()))
        print(f"\nexported heavy, knee and light to {args.out} (elites.md: the table; "
              f"elites.png: the plot)")
        return 0
    assert record is not None
    metrics = export_candidate(setup, record, args.out, finetune_epochs=args.finetune_epochs,
                               seed=seed, device=device, progress=not args.quiet,
                               finetune_config=recipe,
                               model=method.start_model(setup, run, record, args.start, seed),
                               start=args.start, execution=execution_of(args))
    baseline = metrics["baseline"]
    print(f"exported candidate {record['id']} to {args.out}")
    print(f"  MACs {metrics['macs']:,} ({1 - metrics['macs_ratio']:.1%} fewer than "
          f"{baseline['macs']:,}), params {metrics['params']:,} "
          f"({1 - metrics['params_ratio']:.1%} fewer)")
    print(f"  hold-out accuracy {metrics['val_accuracy']:.2%} (search: "
          f"{metrics['search_val_accuracy']:.2%}), test accuracy {metrics['test_accuracy']:.2%}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    run = RunDir(args.run)
    run.config()
    with run.lock("moprune repair"):
        print(repair(run, device=args.device, progress=not args.quiet))
    return 0


__all__ = ["cmd_export", "cmd_pick", "cmd_plot", "cmd_repair", "print_json"]
