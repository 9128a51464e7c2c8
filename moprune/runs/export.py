"""Export a chosen candidate as a physically pruned, optionally fine-tuned network."""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import thop
import torch
from torch import nn

from moprune.core.execution import Execution
from moprune.core.layers import LAYER_RULES
from moprune.core.surgery import prune_model
from moprune.errors import ConfigError
from moprune.runs.rundir import atomic_write_bytes
from moprune.tasks.setup import SearchSetup
from moprune.training.finetune import FinetuneConfig, evaluate_accuracy, finetune


def thop_cost(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, params) of ``model`` for one input, counted by thop (the reference tracer).

    Layer kinds thop does not know are counted by their rule's counter
    (:meth:`moprune.core.layers.LayerRule.thop_op`).
    """
    param = next(model.parameters())
    x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    macs, params = thop.profile(model, (x,), custom_ops=LAYER_RULES.thop_ops(), verbose=False)
    return int(macs), int(params)


def export_candidate(setup: SearchSetup, record: dict, out: Path, finetune_epochs: int = 0,
                     seed: int = 0, device: str | torch.device = "cpu",
                     progress: bool = True, finetune_config: FinetuneConfig | None = None,
                     model: nn.Module | None = None, start: str = "scored",
                     execution: Execution | None = None) -> dict:
    """Prune the full model to ``record``'s plan, optionally fine-tune, measure and save.

    The file holds ``{"model", "plan", "normalization", "metrics", "input_shape", "genome",
    "id"}``; ``torch.load(path, weights_only=False)["model"]`` is a runnable module.

    Args:
        setup: The run's problem setup (model, space, data).
        record: The candidate (from ``candidates.jsonl`` / ``front.json``).
        out: Output file.
        finetune_epochs: Epochs of fine-tuning on the training part (0 = none).
        seed: Seed of the fine-tuning shuffles and augmentation.
        device: Where to measure and fine-tune.
        progress: Show progress bars.
        finetune_config: Recipe (default: the task's, with ``finetune_epochs`` epochs).
        model: The candidate's network when it is not the full network pruned to the plan
            (a CCEP round's fine-tuned network, inherited or re-initialised weights); it is
            copied, not changed.
        start: What ``model`` is (``"scored"`` or ``"scratch"``), for the metrics and the
            fine-tuning checkpoint.
        execution: Precision, memory format and compilation of the fine-tuning (default:
            ``Execution()``); the reported accuracies are measured in fp32.

    Fine-tuning writes a checkpoint after every epoch to ``OUT.ckpt``; an interrupted export
    run again with the same settings resumes from it. It is removed once ``out`` is written.

    Returns:
        The metrics written into the file.

    """
    problem, space, data = setup.problem, setup.space, setup.data
    genome = problem.genome_from_key(record["genome"])
    plan = problem.decode(genome)
    if model is None:
        model = prune_model(setup.task.model, space, plan).to(device)
    else:
        model = copy.deepcopy(model).to(device).eval()
    macs, params = thop_cost(model, space.input_shape)
    val_acc, val_loss = evaluate_accuracy(model, data.val, data.normalization, device=device)
    test_acc, _ = evaluate_accuracy(model, data.test, data.normalization, device=device)
    metrics = {
        "id": record["id"], "macs": macs, "flops": 2 * macs, "params": params,
        "macs_ratio": macs / problem.baseline["macs"],
        "params_ratio": params / problem.baseline["params"],
        "search_val_accuracy": record["val_accuracy"],
        "val_accuracy": val_acc, "val_loss": val_loss, "test_accuracy": test_acc,
        "val_images": len(data.val), "test_images": len(data.test),
        "baseline": dict(problem.baseline), "finetune_epochs": finetune_epochs,
        "start": start,
        "units": "MACs and FLOPs per image (FLOPs = 2 x MACs)",
    }
    if finetune_epochs > 0:
        if len(data.train) == 0:
            raise ConfigError("fine-tuning needs the training data, but none was loaded")
        cfg = dataclasses.replace(finetune_config or setup.task.finetune, epochs=finetune_epochs)
        gen = torch.Generator().manual_seed(seed)
        result = finetune(model, data.train, data.normalization, cfg, generator=gen,
                          device=device, val=data.val, progress=progress,
                          checkpoint_path=checkpoint_file(out), execution=execution,
                          checkpoint_key={"id": record["id"], "genome": record["genome"],
                                          "start": start, "seed": seed})
        val_acc, val_loss = evaluate_accuracy(model, data.val, data.normalization, device=device)
        test_acc, _ = evaluate_accuracy(model, data.test, data.normalization, device=device)
        metrics.update({"pre_finetune_val_accuracy": metrics["val_accuracy"],
                        "pre_finetune_test_accuracy": metrics["test_accuracy"],
                        "val_accuracy": val_acc, "val_loss": val_loss,
                        "test_accuracy": test_acc, "finetune_history": result.history,
                        "finetune_config": dataclasses.asdict(cfg),
                        "finetune_execution": (execution or Execution()).resolve(
                            device).to_dict()})
    norm = data.normalization
    payload = {
        "model": model.cpu().eval(),
        "plan": plan.to_dict(space),
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "metrics": metrics,
        "input_shape": list(space.input_shape),
        "genome": record["genome"],
        "id": record["id"],
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(out), buf.getvalue())
    checkpoint_file(out).unlink(missing_ok=True)
    return metrics


def checkpoint_file(out: Path) -> Path:
    """The per-epoch fine-tuning checkpoint of an export to ``out`` (removed when done)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")

