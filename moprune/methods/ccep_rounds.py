"""CCEP (Shang et al., IJCAI 2022): rounds of cooperative coevolution with fine-tuning.

Each round, every prunable group of the current network evolves a small population of
masks over its channels with the rest of the network fixed (:mod:`moprune.algorithms.coevolution`,
all groups' candidates evaluated together), the groups' winners are spliced into one
network, which is physically pruned and fine-tuned on the training part. The network after
every round is a trade-off point: its hold-out and test accuracy, MACs and parameters are
recorded in the run directory (``candidates.jsonl``, one line per round, and the weights in
``rounds/``), so ``moprune pick`` and ``moprune export`` choose among rounds as among the
members of any front.

Stopping: after ``rounds`` rounds, when the network reaches ``target_macs_ratio`` (the last
round then splices only as many group winners as needed, the cheapest in accuracy per MAC
first), when a round's hold-out accuracy falls more than ``max_accuracy_drop`` below the
starting network's, or when no group can lose a channel any more.

Resume works between rounds and inside one (after any generation, or fine-tuning epoch).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from moprune.algorithms.coevolution import CoevolutionConfig, CoevolutionRound, GroupWinner
from moprune.core.execution import Execution
from moprune.core.plan import PruningPlan
from moprune.core.space import PruningSpace
from moprune.core.surgery import prune_model
from moprune.errors import ConfigError
from moprune.evaluation.evaluator import Evaluator
from moprune.evaluation.scorer import Scorer
from moprune.fronts import PickRule, format_table, front_records, pick, plot_rounds
from moprune.methods.driver import write_plots
from moprune.problems.mask import FilterMaskProblem
from moprune.runs.rundir import (
    BASELINE,
    FRONT,
    PROGRESS,
    RunDir,
    RunDirError,
    atomic_write_bytes,
    detached_problem,
)
from moprune.tasks.setup import SearchSetup
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy, finetune

ROUNDS_DIR = "rounds"  # the network after each round
COEVOLUTION_LOG = "coevolution.jsonl"  # every sub-candidate of every group, round, generation
RECIPES = ("published", "task")
OBJECTIVES = ("error", "macs_ratio")

StepHook = Callable[[int, int], None]


def published_recipe(base: FinetuneConfig, epochs: int) -> FinetuneConfig:
    """CCEP's CIFAR fine-tuning between rounds, keeping ``base``'s augmentation settings.

    SGD with learning rate 0.1, momentum 0.9 (no Nesterov), weight decay 1e-4, batch 128,
    learning rate times 0.1 at half of the epochs (published: 100 epochs, step at 50).
    """
    return dataclasses.replace(base, epochs=epochs, lr=0.1, momentum=0.9, nesterov=False,
                               weight_decay=1e-4, batch_size=128, schedule="step",
                               milestones=(0.5,), gamma=0.1)


@dataclass(frozen=True)
class CCEPConfig:
    """Settings of a CCEP search (defaults: the published CIFAR settings).

    Attributes:
        rounds: Rounds of coevolution + fine-tuning (published: 20).
        coevolution: Per-group algorithm settings of each round.
        finetune_epochs: Fine-tuning epochs after each round (published: 100; 0 = none).
        recipe: ``"published"`` (:func:`published_recipe`) or ``"task"`` (the problem
            file's recipe), each with ``finetune_epochs`` epochs.
        finetune: An explicit recipe instead (its ``epochs`` are used as they are).
        keep_best_epoch: Keep the fine-tuning epoch with the best hold-out accuracy (the
            public code selected on the test set; moprune never does).
        target_macs_ratio: Stop once MACs / starting MACs <= this; the last round prunes
            only as many groups as needed to reach it.
        max_accuracy_drop: Stop after a round whose hold-out accuracy is more than this
            fraction below the starting network's (that round is recorded but infeasible).
        seed: Seed of the coevolution and of the fine-tuning shuffles.

    """

    rounds: int = 20
    coevolution: CoevolutionConfig = field(default_factory=CoevolutionConfig)
    finetune_epochs: int = 100
    recipe: str = "published"
    finetune: FinetuneConfig | None = None
    keep_best_epoch: bool = True
    target_macs_ratio: float | None = None
    max_accuracy_drop: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1; got {self.rounds}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be >= 0; got {self.finetune_epochs}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {RECIPES}; got {self.recipe!r}")
        if self.target_macs_ratio is not None and not 0 < self.target_macs_ratio <= 1:
            raise ConfigError(f"target_macs_ratio must be in (0, 1]; got "
                             f"{self.target_macs_ratio}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError(f"max_accuracy_drop is a fraction in [0, 1]; got "
                             f"{self.max_accuracy_drop}")

    def recipe_for(self, task_recipe: FinetuneConfig) -> FinetuneConfig:
        """The fine-tuning recipe used between rounds."""
        if self.finetune is not None:
            return self.finetune
        if self.recipe == "task":
            return dataclasses.replace(task_recipe, epochs=self.finetune_epochs)
        return published_recipe(task_recipe, self.finetune_epochs)

    def to_dict(self) -> dict:
        """JSON form (for the run's identity)."""
        out = dataclasses.asdict(self)
        out["coevolution"].pop("batch_groups")  # speed only: results are identical
        return json.loads(json.dumps(out))  # tuples as lists, as read back from config.json


@dataclass
class Network:
    """The current network of a CCEP run.

    Attributes:
        model: The physically pruned network.
        kept: Per group of the original space, the original channel indices still kept.

    """

    model: nn.Module
    kept: list[np.ndarray]

    def mask(self, space: PruningSpace) -> np.ndarray:
        """Keep-mask over the original space's channels."""
        return _global_mask(space, self.kept)


def _global_mask(space: PruningSpace, kept: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(space.n_channels, dtype=bool)
    for g, idx in enumerate(kept):
        out[space.offsets[g] + idx] = True
    return out


def _round_file(r: int) -> str:
    return f"{ROUNDS_DIR}/round_{r:03d}.pt"


def save_network(run: RunDir, r: int, net: Network) -> str:
    """Write round ``r``'s network into the run (atomically); returns its relative path."""
    buf = io.BytesIO()
    torch.save({"model": net.model.cpu().eval(), "kept": [k.tolist() for k in net.kept],
                "round": r}, buf)
    name = _round_file(r)
    atomic_write_bytes(run.path / name, buf.getvalue())
    return name


def load_network(run: RunDir, r: int | str) -> Network:
    """Round ``r``'s network (or the one in the run-relative file ``r``)."""
    path = run.path / (_round_file(r) if isinstance(r, int) else r)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise RunDirError(f"{str(path)!r} is missing; the run directory is incomplete") from None
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise RunDirError(f"{str(path)!r} is corrupted ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), nn.Module):
        raise RunDirError(f"{str(path)!r} is not a moprune round file")
    return Network(obj["model"].eval(), [np.asarray(k, dtype=np.int64) for k in obj["kept"]])


class _Round:
    """The current network's pruning space and problem, with the map to the original groups."""

    def __init__(self, setup: SearchSetup, net: Network, space: PruningSpace) -> None:
        self.net = net
        self.space = space
        names = {g.name: g.index for g in setup.space.groups}
        unknown = [g.name for g in self.space.groups if g.name not in names]
        if unknown:
            raise RuntimeError(f"the pruned network has groups {unknown} that the original "
                               "network does not have; CCEP cannot map them")
        self.to_orig = {g.index: names[g.name] for g in self.space.groups}
        ev = setup.evaluator
        if not isinstance(ev, Evaluator):
            raise TypeError(f"CCEP scores each round's candidates as they are (an Evaluator); "
                            f"the setup's scorer is a {type(ev).__name__}")
        evaluator = Evaluator(net.model, self.space, setup.data.val, setup.data.normalization,
                              device=ev.device, mode=ev.mode, batch_size=ev.batch_size,
                              execution=ev.execution)
        self.problem = FilterMaskProblem(evaluator, OBJECTIVES)

    @classmethod
    def of(cls, setup: SearchSetup, net: Network) -> _Round | None:
        """The round on ``net``; None when every group is down to its minimum."""
        space = PruningSpace.from_model(net.model, setup.space.input_shape, setup.space.policy)
        return cls(setup, net, space) if space.n_groups else None

    def kept_after(self, winners: list[GroupWinner]) -> list[np.ndarray]:
        """Original channel indices per original group once ``winners`` are spliced in."""
        kept = list(self.net.kept)
        for w in winners:
            g = self.to_orig[w.group]
            kept[g] = self.net.kept[g][w.keep]
        return kept

    def splice(self, winners: list[GroupWinner]) -> tuple[nn.Module, Network]:
        """Prune the network to the winners' masks; returns the child and its record."""
        keep = [np.arange(n, dtype=np.int64) for n in self.space.sizes]
        for w in winners:
            keep[w.group] = np.flatnonzero(w.keep).astype(np.int64)
        child = prune_model(self.net.model, self.space, PruningPlan(tuple(keep)))
        return child, Network(child, self.kept_after(winners))


def choose_splice(winners: list[GroupWinner], round_: _Round, setup: SearchSetup,
                  target: float | None) -> list[GroupWinner]:
    """The winners to splice: all, or with a MACs target the fewest needed to reach it.

    Groups are taken in order of accuracy lost per MAC saved (each measured with only that
    group pruned); the MACs of the combined network are exact (cost model).
    """
    if target is None or not winners:
        return winners
    cost, base = setup.problem.cost_model, setup.problem.baseline["macs"]
    space = setup.space

    def ratio(ws: list[GroupWinner]) -> float:
        mask = _global_mask(space, round_.kept_after(ws))
        return float(cost.cost_of_masks(mask[None]).macs[0] / base)

    if ratio(winners) >= target:
        return winners
    start_error = 1.0 - round_.problem.baseline["val_accuracy"]
    start = ratio([])
    saved = {w.group: start - ratio([w]) for w in winners}
    order = sorted(winners, key=lambda w: ((w.error - start_error) / max(saved[w.group], 1e-12),
                                           w.group))
    chosen: list[GroupWinner] = []
    for w in order:
        chosen.append(w)
        if ratio(chosen) <= target:
            break
    return chosen


def _seed(seed: int, r: int, purpose: int) -> int:
    """Independent seeds per round and purpose (0 coevolution, 1 fine-tuning)."""
    return int(np.random.SeedSequence([seed, r, purpose]).generate_state(1)[0])


def _record(setup: SearchSetup, r: int, net: Network, extra: dict) -> dict:
    data, problem = setup.data, setup.problem
    mask = net.mask(setup.space)
    cost = problem.cost_model.cost_of_masks(mask[None])
    val_acc, val_loss = evaluate_accuracy(net.model, data.val, data.normalization,
                                          device=setup.evaluator.device)
    test_acc, _ = evaluate_accuracy(net.model, data.test, data.normalization,
                                    device=setup.evaluator.device)
    net.model.cpu()
    return {
        "id": r, "round": r, "generation": r, "genome": problem.genome_key(mask),
        "val_accuracy": val_acc, "val_loss": val_loss, "test_accuracy": test_acc,
        "macs": int(cost.macs[0]), "params": int(cost.params[0]),
        "macs_ratio": float(cost.macs[0] / problem.baseline["macs"]),
        "params_ratio": float(cost.params[0] / problem.baseline["params"]),
        "kept": [len(k) for k in net.kept], "weights_file": _round_file(r), **extra,
    }


def _log_offspring(run: RunDir, round_: _Round, r: int, gen: int, off, base_macs: int) -> None:
    """Append the generation's sub-candidates (whole-network values) to the coevolution log."""
    if off is None or len(off) == 0:
        return
    space = round_.space
    X, groups = off.get("X").astype(bool), off.get("group")
    acc, macs = off.get("accuracy"), off.get("macs")
    rows = []
    for x, g, a, m in zip(X, groups, acc, macs):
        g = int(g)
        rows.append({"round": r, "generation": gen, "group": space.groups[g].name,
                     "kept": int(x[space.group_slice(g)].sum()), "size": space.groups[g].size,
                     "val_accuracy": float(a), "macs": int(m), "macs_ratio": float(m) / base_macs})
    run.append_jsonl(COEVOLUTION_LOG, rows)


def run_ccep(setup: SearchSetup, run: RunDir, config: CCEPConfig, resume: bool,
             progress: bool = True, on_step: StepHook | None = None) -> list[dict]:
    """Run (or resume) a CCEP search and write its rounds into ``run``.

    Args:
        setup: The original network's problem, evaluator and data (with the training part
            when fine-tuning); the problem must be a :class:`FilterMaskProblem`.
        run: The prepared run directory.
        config: CCEP settings.
        resume: Continue from the run's checkpoint.
        progress: Show progress bars.
        on_step: Called after every checkpoint as ``on_step(round, step)``: ``step`` is the
            coevolution generation (1 = initial populations), 0 once the winners are chosen
            (fine-tuning next), -1 when the round is done. Tests use it to interrupt a run.

    Returns:
        The front over rounds (records with test accuracy).

    """
    if not isinstance(setup.problem, FilterMaskProblem):
        raise TypeError("CCEP needs a FilterMaskProblem (build the setup with encoding 'mask')")
    recipe = config.recipe_for(setup.task.finetune)
    if recipe.epochs > 0 and len(setup.data.train) == 0:
        raise ConfigError("CCEP fine-tunes between rounds but no training data was loaded; "
                         "load it (DataRequest(load_train=True)) or set finetune_epochs=0")
    baseline = setup.problem.baseline
    if resume:
        state = run.load_checkpoint()
        if state.get("algorithm") != "ccep":
            raise RunDirError(f"the checkpoint in {str(run.path)!r} is not a CCEP checkpoint")
        run.resume_candidates(state)
        done, gen = state["round"], state.get("generation", 0)
        run.filter_jsonl(COEVOLUTION_LOG, lambda row: row["round"] <= done or (
            row["round"] == done + 1 and row["generation"] <= gen))
    else:
        run.write_json(BASELINE, baseline)
        net0 = Network(setup.task.model, [np.arange(g.size, dtype=np.int64)
                                          for g in setup.space.groups])
        save_network(run, 0, net0)
        run.append_candidates([_record(setup, 0, load_network(run, 0), {})])
        state = {"algorithm": "ccep", "round": 0, "phase": "evolve", "coevolution": None,
                 "generation": 0, "splice": None, "stopped": None}
        run.save_checkpoint(state)

    bar = tqdm(total=config.rounds, initial=state["round"], desc="rounds", unit="round",
               disable=not progress)
    try:
        while state["stopped"] is None:
            state = _one_round(setup, run, config, recipe, state, progress, on_step)
            if state["phase"] == "evolve":
                bar.update(1)
                last = run.candidates()[-1]
                bar.set_postfix(macs=f"-{1 - last['macs_ratio']:.1%}",
                                val_acc=f"{last['val_accuracy']:.3f}")
    finally:
        bar.close()
    if progress:
        print(f"CCEP stopped after round {state['round']}: {state['stopped']}")
    return finalize_ccep(setup, run, config)


def _stop_reason(config: CCEPConfig, r: int, record: dict, baseline: dict) -> str | None:
    if (config.max_accuracy_drop is not None
            and record["val_accuracy"] < baseline["val_accuracy"] - config.max_accuracy_drop):
        return (f"hold-out accuracy {record['val_accuracy']:.2%} is more than "
                f"{config.max_accuracy_drop:.2%} below the start")
    if config.target_macs_ratio is not None and record["macs_ratio"] <= config.target_macs_ratio:
        return f"reached the MACs target ({record['macs_ratio']:.1%} of the start)"
    if r >= config.rounds:
        return f"all {config.rounds} rounds done"
    return None


def _one_round(setup: SearchSetup, run: RunDir, config: CCEPConfig, recipe: FinetuneConfig,
               state: dict, progress: bool, on_step: StepHook | None) -> dict:
    """Run (the rest of) one CCEP round: coevolution, splice, fine-tune; checkpointed.

    The coevolution is skipped when the state is already past it (phase ``"finetune"``).
    """
    r = state["round"]
    round_ = _Round.of(setup, load_network(run, r))
    if round_ is None:
        state = {**state, "stopped": "no group can lose a channel any more"}
        run.save_checkpoint(state)
        return state
    if state["phase"] == "evolve":
        began = time.perf_counter()
        alg: CoevolutionRound | None = state["coevolution"]
        if alg is None:
            alg = CoevolutionRound(config.coevolution)
            alg.setup(round_.problem, seed=_seed(config.seed, r + 1, 0), verbose=False)
        else:
            alg.problem = round_.problem
        gen = state["generation"]
        total = config.coevolution.generations + 1
        bar = tqdm(total=total, initial=gen, desc=f"round {r + 1} coevolution", unit="gen",
                   leave=False, disable=not progress)
        try:
            while alg.has_next():
                alg.next()
                gen += 1
                _log_offspring(run, round_, r + 1, gen, alg.off, setup.problem.baseline["macs"])
                with detached_problem(alg):
                    state = {**state, "coevolution": alg, "generation": gen,
                             "search_seconds": state.get("search_seconds", 0.0)
                             + time.perf_counter() - began}
                    run.save_checkpoint(state)
                began = time.perf_counter()
                run.write_json(PROGRESS, {"rounds_done": r, "round": r + 1, "generation": gen,
                                          "generations": total})
                bar.update(1)
                if on_step is not None:
                    on_step(r + 1, gen)
        finally:
            bar.close()
        winners = choose_splice(alg.winners(), round_, setup, config.target_macs_ratio)
        if not winners:
            state = {**state, "stopped": "no group found a pruned mask this round"}
            run.save_checkpoint(state)
            return state
        state = {**state, "phase": "finetune", "coevolution": None, "splice": winners,
                 "evaluations": int(alg.evaluator.n_eval),
                 "cache_hits": int(round_.problem.evaluator.stats.cache_hits)}
        run.save_checkpoint(state)
        if on_step is not None:
            on_step(r + 1, 0)
    # splice + fine-tune
    winners = state["splice"]
    child, net = round_.splice(winners)
    device = setup.evaluator.device
    spliced_acc, _ = evaluate_accuracy(child, setup.data.val, setup.data.normalization,
                                       device=device)
    began = time.perf_counter()
    ckpt = run.path / ROUNDS_DIR / f".finetune_{r + 1:03d}.pt"
    history: list[dict] = []
    best_epoch = None
    if recipe.epochs > 0:
        result = finetune(child, setup.data.train, setup.data.normalization, recipe,
                          generator=torch.Generator().manual_seed(_seed(config.seed, r + 1, 1)),
                          device=device, val=setup.data.val, progress=progress,
                          checkpoint_path=ckpt, keep_best=config.keep_best_epoch,
                          execution=_uncompiled(setup.evaluator))
        history, best_epoch = result.history, result.best_epoch
    child.cpu()
    save_network(run, r + 1, net)
    record = _record(setup, r + 1, net, {
        "spliced_val_accuracy": spliced_acc, "groups_pruned": len(winners),
        "evaluations": state.get("evaluations", 0), "cache_hits": state.get("cache_hits", 0),
        "search_seconds": round(state.get("search_seconds", 0.0), 3),
        "finetune_seconds": round(time.perf_counter() - began, 3),
        "finetune_epochs": recipe.epochs, "best_epoch": best_epoch,
        "finetune_val_accuracy": [h.get("val_accuracy") for h in history],
    })
    run.append_candidates([record])
    ckpt.unlink(missing_ok=True)
    stopped = _stop_reason(config, r + 1, record, setup.problem.baseline)
    state = {"algorithm": "ccep", "round": r + 1, "phase": "evolve", "coevolution": None,
             "generation": 0, "splice": None, "stopped": stopped}
    run.save_checkpoint(state)
    run.write_json(PROGRESS, {"rounds_done": r + 1, "stopped": stopped})
    if on_step is not None:
        on_step(r + 1, -1)
    return state


def _uncompiled(evaluator: Scorer) -> Execution:
    """The search's execution without compilation: every round trains new shapes."""
    return dataclasses.replace(evaluator.execution, compile=False)


def finalize_ccep(setup: SearchSetup, run: RunDir, config: CCEPConfig) -> list[dict]:
    """Front over the rounds (infeasible rounds left out), baseline with test accuracy, plots."""
    rounds = run.candidates()
    baseline = dict(setup.problem.baseline)
    baseline["test_accuracy"] = rounds[0]["test_accuracy"]
    baseline["val_images"] = len(setup.data.val)
    baseline["test_images"] = len(setup.data.test)
    ok = [r for r in rounds if config.max_accuracy_drop is None
          or r["val_accuracy"] >= baseline["val_accuracy"] - config.max_accuracy_drop]
    front = front_records(ok or rounds, OBJECTIVES)
    run.write_json(BASELINE, baseline)
    run.write_json(FRONT, front)
    run.finish()
    write_plots(run, extra_plots=plot_run_rounds)
    return front


def plot_run_rounds(run: RunDir, out: Path) -> list[Path]:
    """Accuracy against MACs reduction per round (``out/rounds.{png,svg}``)."""
    return plot_rounds(run.candidates(), run.baseline(), out / "rounds",
                       title=run.config().get("title"))


def rounds_table_rows(run: RunDir) -> list[dict]:
    """One row per round for tables."""
    base = run.baseline()
    rows = []
    for r in run.candidates():
        rows.append({"round": r["round"], "val_accuracy": r["val_accuracy"],
                     "test_accuracy": r.get("test_accuracy"),
                     "spliced": r.get("spliced_val_accuracy"),
                     "macs_reduction": 1 - r["macs"] / base["macs"],
                     "params_reduction": 1 - r["params"] / base["params"],
                     "groups": r.get("groups_pruned")})
    return rows


ROUND_COLUMNS = (
    ("round", "round", "d"), ("val_accuracy", "val acc", ".2%"),
    ("test_accuracy", "test acc", ".2%"), ("spliced", "pruned, before FT", ".2%"),
    ("macs_reduction", "MACs red.", ".1%"), ("params_reduction", "params red.", ".1%"),
    ("groups", "groups pruned", "d"),
)


def rounds_summary(run: RunDir) -> str:
    """Table of a CCEP run's rounds and the knee of its front over rounds."""
    rows = rounds_table_rows(run)
    knee = pick(run.front(), run.baseline(), PickRule("knee"), OBJECTIVES)
    return (format_table(rows, ROUND_COLUMNS)
            + f"\nknee of the front over rounds: round {knee['id']} (hold-out accuracy "
              "selects; test accuracy is reported only)")


def knee_round(run: RunDir) -> dict:
    """The knee of the run's front over rounds."""
    return pick(run.front(), run.baseline(), PickRule("knee"), OBJECTIVES)


__all__ = [
    "COEVOLUTION_LOG", "OBJECTIVES", "RECIPES", "ROUNDS_DIR", "CCEPConfig", "Network",
    "finalize_ccep", "knee_round", "load_network", "plot_run_rounds", "published_recipe",
    "rounds_summary", "rounds_table_rows", "run_ccep", "save_network",
]
