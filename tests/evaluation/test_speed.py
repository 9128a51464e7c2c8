"""Speed settings: precision, channels-last, compilation, and no host sync per candidate.

The evaluator and the fine-tuner run under :class:`moprune.core.execution.Execution`. These tests
check that every setting gives the same answers (exactly in fp32, within bf16's resolution
otherwise), on every tiny model, that a call synchronises with the host a fixed number of
times whatever the population size, and that compiled passes equal eager ones without
recompiling between populations. CUDA-only checks are skipped on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import model_and_space, one_torch_thread, random_plan, tiny_model_ids

from moprune.cli.main import main
from moprune.core.execution import Execution, normalize
from moprune.core.gated import GatedModel, tile
from moprune.core.plan import PruningPlan, masks_matrix
from moprune.core.sliced import SlicedModel
from moprune.core.surgery import prune_model
from moprune.data.datasets import Normalization, Split
from moprune.errors import NonFiniteError
from moprune.evaluation.evaluator import Evaluator
from moprune.methods.rebuild import stored_execution as _stored_execution
from moprune.runs.rundir import RunDir
from moprune.training.finetune import (
    FinetuneConfig,
    _lr_at,
    evaluate_accuracy,
    fast_recipe,
    finetune,
)

CUDA = torch.cuda.is_available()
NORM3 = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def setup(model_id: str, n_images: int = 20, seed: int = 0):
    model, space, shape = model_and_space(model_id, False)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, int(model(torch.zeros(1, *shape)).shape[1]), (n_images,),
                           generator=g)
    norm = Normalization(tuple([0.5] * shape[0]), tuple([0.25] * shape[0]))
    return model, space, Split(images, labels), norm


def plans_of(space, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    plans = [PruningPlan.full(space)] + [random_plan(space, rng, p)
                                         for p in rng.uniform(0.3, 0.95, n - 1)]
    return masks_matrix(space, plans)


# ---------------------------------------------------------------------------- Execution


def test_execution_resolves_per_device() -> None:
    cpu = Execution().resolve("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile) == ("fp32", True, False)
    assert cpu.dtype is None and cpu.memory_format == torch.channels_last
    assert Execution("bf16", channels_last=False).resolve("cpu").dtype == torch.bfloat16
    assert Execution("fp16").resolve("cpu").dtype == torch.float16
    if CUDA:
        gpu = Execution().resolve("cuda")
        assert gpu.precision in ("bf16", "fp16") and gpu.channels_last
    assert Execution("bf16", True, True).to_dict() == {"precision": "bf16",
                                                        "channels_last": True, "compile": True}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "float32"}, "precision must be one of auto, fp32, bf16, fp16; got 'float32'"),
    ({"channels_last": "yes"}, "channels_last must be True, False or None"),
    ({"compile": 1}, "compile must be a bool; got 1"),
])
def test_execution_refuses_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Execution(**kwargs)


def test_unresolved_precision_has_no_dtype() -> None:
    with pytest.raises(ValueError, match="resolve the execution on a device first"):
        _ = Execution().dtype


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_normalize_is_bit_identical_to_normalization_apply(fmt: torch.memory_format) -> None:
    x = torch.randint(0, 256, (5, 3, 7, 6), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(NORM3.mean).view(1, -1, 1, 1)
    std = torch.tensor(NORM3.std).view(1, -1, 1, 1)
    out = normalize(x, mean, std, fmt)
    assert out.is_contiguous(memory_format=fmt)
    assert torch.equal(out, NORM3.apply(x))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_tile_repeats_the_batch_candidate_major_in_its_format(fmt) -> None:
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=fmt)
    t = tile(x, 3)
    assert t.shape == (12, 3, 5, 5) and t.is_contiguous(memory_format=fmt)
    for p in range(3):
        assert torch.equal(t[4 * p:4 * (p + 1)], x)
    y = torch.randn(4, 7)  # 2-d inputs (linear layers) tile too
    assert torch.equal(tile(y, 2), torch.cat([y, y]))


# ---------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("model_id", tiny_model_ids())
def test_every_fp32_setting_gives_the_same_results(model_id: str) -> None:
    """Contract over every tiny model: layouts and modes agree with the pruned network."""
    model, space, split, norm = setup(model_id)
    masks = plans_of(space, 6)
    runs = {}
    for mode in ("gate", "slice"):
        for cl in (False, True):
            ev = Evaluator(model, space, split, norm, mode=mode, batch_size=8,
                           execution=Execution("fp32", channels_last=cl))
            runs[mode, cl] = ev.evaluate_masks(masks)
    ref = runs["slice", False]
    for key, res in runs.items():
        np.testing.assert_array_equal(res.accuracy, ref.accuracy, err_msg=str(key))
        np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-5, atol=1e-5, err_msg=str(key))
    # and the physically pruned network, evaluated the plain way
    plan = PruningPlan.from_mask(space, masks[-1])
    acc, loss = evaluate_accuracy(prune_model(model, space, plan), split, norm,
                                  execution=Execution("fp32", channels_last=False))
    assert acc == ref.accuracy[-1]
    assert math.isclose(loss, ref.loss[-1], rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("model_id", ["digits_cnn", "cifar_resnet20"])
@pytest.mark.parametrize("mode", ["gate", "slice"])
def test_bf16_autocast_is_close_to_fp32(model_id: str, mode: str) -> None:
    model, space, split, norm = setup(model_id, n_images=64)
    masks = plans_of(space, 4)
    fp32 = Evaluator(model, space, split, norm, mode=mode,
                     execution=Execution("fp32")).evaluate_masks(masks)
    ev = Evaluator(model, space, split, norm, mode=mode, execution=Execution("bf16"))
    assert ev.execution.precision == "bf16"
    bf16 = ev.evaluate_masks(masks)
    # bf16 keeps 8 bits of mantissa: losses within a few per cent, and at most a few
    # near-tied images may change their top-1 class
    np.testing.assert_allclose(bf16.loss, fp32.loss, rtol=0.05, atol=0.02)
    assert np.abs(bf16.accuracy - fp32.accuracy).max() <= 3 / 64


def test_gate_populations_in_chunks_equal_one_at_a_time() -> None:
    model, space, split, norm = setup("cifar_resnet20", n_images=12)
    masks = plans_of(space, 7)
    one = Evaluator(model, space, split, norm, mode="gate", batch_size=12,
                    execution=Execution("fp32")).score(masks)
    three = Evaluator(model, space, split, norm, mode="gate", batch_size=36,
                      execution=Execution("fp32")).score(masks)  # 3 candidates per pass
    np.testing.assert_array_equal(one.accuracy, three.accuracy)
    np.testing.assert_allclose(one.loss, three.loss, rtol=1e-6, atol=1e-6)


def test_images_stay_uint8_on_the_device() -> None:
    model, space, split, norm = setup("digits_cnn")
    ev = Evaluator(model, space, split, norm)
    assert ev._x.dtype == torch.uint8  # noqa: SLF001 - the point of the test
    convs = [m.weight for m in ev.network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    theirs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous() for w in theirs)  # the caller's model is left alone


def test_compile_needs_gate_mode() -> None:
    model, space, split, norm = setup("digits_cnn")
    with pytest.raises(ValueError, match="compile needs gate mode"):
        Evaluator(model, space, split, norm, mode="slice", execution=Execution(compile=True))
    ev = Evaluator(model, space, split, norm, mode="auto", execution=Execution(compile=False))
    assert ev.mode == "slice"  # the CPU default


def test_compiled_gate_pass_equals_eager_and_never_recompiles() -> None:
    """One graph for every population size: the last chunk is padded to the chunk size."""
    torch._dynamo.reset()
    model, space, split, norm = setup("digits_cnn", n_images=10)
    masks = plans_of(space, 7)
    eager = Evaluator(model, space, split, norm, mode="gate", batch_size=30,
                      execution=Execution("fp32")).score(masks)
    ev = Evaluator(model, space, split, norm, mode="auto", batch_size=30,
                   execution=Execution("fp32", compile=True))
    assert ev.mode == "gate"
    first = ev.score(masks)  # chunks of 3, 3 and 1 (padded to 3)
    counters = torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"]
    second = ev.score(masks[:2])  # another population size: the same graph
    assert counters["stats"]["unique_graphs"] == graphs
    np.testing.assert_array_equal(first.accuracy, eager.accuracy)
    np.testing.assert_allclose(first.loss, eager.loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second.accuracy, eager.accuracy[:2])
    # the gates are cleared after a call: the network runs ungated
    x = torch.randn(2, *space.input_shape)
    with torch.no_grad():
        assert torch.equal(ev.network(x), ev.network(x))
        assert ev._gated._ext is None  # noqa: SLF001


@contextlib.contextmanager
def counting_host_reads(counts: dict[str, int]) -> Iterator[None]:
    """Count the tensor methods that read values back to the host."""
    names = ("item", "tolist", "cpu", "numpy", "__bool__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)
        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("mode", ["gate", "slice"])
def test_host_reads_per_call_do_not_grow_with_the_population(mode: str) -> None:
    model, space, split, norm = setup("cifar_resnet20", n_images=8)
    masks = plans_of(space, 10)
    reads = []
    for n in (1, 10):
        ev = Evaluator(model, space, split, norm, mode=mode, batch_size=8,
                       execution=Execution("fp32"))
        counts: dict[str, int] = {}
        with counting_host_reads(counts):
            ev.evaluate_masks(masks[:n])
        reads.append(counts)
    assert reads[0] == reads[1], reads
    # the non-finite check and one transfer of the results (Tensor.cpu, then .numpy)
    assert reads[1] == {"__bool__": 1, "cpu": 1, "numpy": 1}, reads[1]


def test_non_finite_logits_are_reported_once_per_call() -> None:
    model, space, split, norm = setup("digits_cnn")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    ev = Evaluator(model, space, split, norm, mode="gate")
    with pytest.raises(NonFiniteError, match=r"for 3 of 3 candidate\(s\) \(precision fp32"):
        ev.evaluate_masks(plans_of(space, 3))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_evaluation_does_not_synchronise_per_candidate() -> None:
    model, space, split, norm = setup("cifar_resnet20", n_images=32)
    masks = plans_of(space, 8)
    for mode in ("gate", "slice"):
        ev = Evaluator(model, space, split, norm, device="cuda", mode=mode, batch_size=64)
        ev.score(masks[:1])  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                ev.score(masks)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(record) <= 4, [str(w.message) for w in record]


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_slicing_from_a_cpu_mask_equals_slicing_on_the_device() -> None:
    model, space, _, _ = setup("cifar_resnet20")
    sm = SlicedModel(model.cuda(), space)
    mask = torch.as_tensor(plans_of(space, 2)[1])
    for a, b in zip(sm.indices(mask), sm.indices(mask.cuda()), strict=True):
        assert a.name == b.name
        for u, v in ((a.k_in, b.k_in), (a.k_out, b.k_out)):
            assert (u is None) == (v is None)
            if u is not None:
                assert u.device.type == "cuda" and torch.equal(u, v)


def test_persistent_gates_leave_the_model_ungated_between_calls() -> None:
    model, space, split, norm = setup("digits_cnn")
    x = norm.apply(split.images[:4])
    with torch.no_grad():
        before = model(x)
        gm = GatedModel(model, space, persistent=True)
        gated = gm.forward(x, torch.as_tensor(plans_of(space, 2)))
        assert torch.equal(model(x), before)
        plan = PruningPlan.from_mask(space, plans_of(space, 2)[1])
        torch.testing.assert_close(gated[1], prune_model(model, space, plan)(x),
                                   rtol=1e-5, atol=1e-5)
        gm.close()
        assert not any(m._forward_pre_hooks for m in model.modules())  # noqa: SLF001


# ---------------------------------------------------------------------------- fine-tuning


def train_split(n: int = 64, seed: int = 0) -> tuple[Split, Normalization]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    return Split(images, torch.randint(0, 10, (n,), generator=g)), NORM3


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


CONFIG = FinetuneConfig(epochs=2, lr=0.05, batch_size=16, schedule="triangle", warmup=0.25)


def trained(execution: Execution | None, seed: int = 3) -> torch.nn.Module:
    net = small_net()
    split, norm = train_split()
    finetune(net, split, norm, CONFIG, generator=torch.Generator().manual_seed(seed),
             progress=False, execution=execution)
    return net


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_finetune_in_every_precision_is_deterministic(precision: str) -> None:
    a = trained(Execution(precision))
    b = trained(Execution(precision))
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v), k
    ref = trained(Execution("fp32", channels_last=False))
    for (k, u), v in zip(a.state_dict().items(), ref.state_dict().values(), strict=True):
        if u.is_floating_point():
            tol = 1e-4 if precision == "fp32" else 0.1
            torch.testing.assert_close(u, v, rtol=tol, atol=tol, msg=k)


def test_compiled_finetune_matches_eager() -> None:
    torch._dynamo.reset()
    a = trained(Execution("fp32", compile=True))
    b = trained(Execution("fp32"))
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if u.is_floating_point():
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4, msg=k)


def test_checkpoint_refuses_another_precision(tmp_path) -> None:
    split, norm = train_split()
    ckpt = tmp_path / "ft.ckpt"
    cfg = dataclasses.replace(CONFIG, epochs=3)
    net = small_net()
    finetune(net, split, norm, dataclasses.replace(cfg, epochs=3),
             generator=torch.Generator().manual_seed(0), progress=False,
             checkpoint_path=ckpt, execution=Execution("fp32"))
    with pytest.raises(ValueError, match="execution: stored"):
        finetune(small_net(), split, norm, cfg, generator=torch.Generator().manual_seed(0),
                 progress=False, checkpoint_path=ckpt, execution=Execution("bf16"))


def test_triangle_schedule_with_warmup() -> None:
    total = 100
    lrs = [_lr_at(CONFIG, s, total) for s in range(total)]
    warm = 25
    assert lrs[0] == pytest.approx(CONFIG.lr / warm)
    assert lrs[warm - 1] == pytest.approx(CONFIG.lr) == lrs[warm]
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:], strict=False))
    assert lrs[-1] == pytest.approx(CONFIG.lr / (total - warm))
    cosine = dataclasses.replace(CONFIG, schedule="cosine")
    assert _lr_at(cosine, warm, total) == pytest.approx(CONFIG.lr)  # continuous after warm-up
    plain = dataclasses.replace(CONFIG, schedule="cosine", warmup=0.0)
    assert _lr_at(plain, 50, total) == pytest.approx(CONFIG.lr * 0.5)


@pytest.mark.parametrize("warmup", [-0.1, 1.0, "0.2"])
def test_bad_warmup_is_refused(warmup: object) -> None:
    with pytest.raises(ValueError, match=r"warmup must be a fraction in \[0, 1\)"):
        FinetuneConfig(warmup=warmup)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- command line


DIGITS = Path(__file__).resolve().parents[2] / "problems" / "digits_demo.py"


def digits_search(out: Path, weights: Path, *extra: str) -> list[str]:
    return ["search", str(DIGITS), "--weights", str(weights), "--pop-size", "6",
            "--generations", "2", "--eval-images", "96", "--test-images", "96",
            "--out", str(out), "--quiet", *extra]


def test_search_and_export_in_bf16_record_their_settings(tmp_path, digits_weights) -> None:
    run = tmp_path / "run"
    assert main(digits_search(run, digits_weights, "--precision", "bf16")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["execution"] == {"precision": "bf16", "channels_last": None, "compile": False}
    assert config["identity"]["precision"] == "bf16"
    records = RunDir(run).candidates()
    assert records and all(0 <= r["val_accuracy"] <= 1 for r in records)
    out = tmp_path / "knee.pt"
    assert main(["export", str(run), "--id", "knee", "--out", str(out), "--finetune-epochs",
                 "1", "--precision", "bf16", "--quiet"]) == 0
    metrics = torch.load(out, weights_only=False)["metrics"]
    assert metrics["finetune_execution"] == {"precision": "bf16", "channels_last": True,
                                             "compile": False}


def test_compile_with_slice_mode_is_refused_before_anything_is_written(
        tmp_path, digits_weights, capsys) -> None:
    run = tmp_path / "run"
    assert main(digits_search(run, digits_weights, "--compile", "--mode", "slice")) != 0
    assert "compile needs gate mode" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("command", ["search", "export", "finetune"])
def test_help_lists_the_speed_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "--precision {auto,fp32,bf16,fp16}" in out and "--compile" in out


def test_fast_recipe() -> None:
    base = FinetuneConfig(weight_decay=1e-4, augment_flip=False)
    cfg = fast_recipe(base, 3)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.warmup) == (3, 1024, 0.2,
                                                                              "triangle", 0.2)
    assert cfg.weight_decay == 1e-4 and cfg.augment_flip is False  # kept from the task


def test_export_with_the_fast_recipe_needs_epochs(tmp_path, digits_weights, capsys) -> None:
    run = tmp_path / "run"
    assert main(digits_search(run, digits_weights)) == 0
    out = tmp_path / "m.pt"
    assert main(["export", str(run), "--id", "knee", "--out", str(out), "--recipe", "fast",
                 "--quiet"]) != 0
    assert "--recipe fast is a fine-tuning recipe" in capsys.readouterr().err
    assert main(["export", str(run), "--id", "knee", "--out", str(out), "--recipe", "fast",
                 "--finetune-epochs", "1", "--quiet"]) == 0
    metrics = torch.load(out, weights_only=False)["metrics"]
    assert metrics["finetune_config"]["schedule"] == "triangle"
    assert metrics["finetune_config"]["batch_size"] == 1024


def test_runs_made_before_precision_was_recorded_resume_as_fp32(tmp_path, digits_weights,
                                                                capsys) -> None:
    run = tmp_path / "run"
    assert main(digits_search(run, digits_weights)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["identity"]["precision"] == "fp32"  # auto, resolved on the CPU
    del config["identity"]["precision"]
    del config["execution"]
    (run / "config.json").write_text(json.dumps(config))
    for name in ("front.json", "finished.json"):  # interrupted before its front
        (run / name).unlink()
    assert _stored_execution(config) == Execution("fp32", channels_last=False)
    assert main(digits_search(run, digits_weights, "--precision", "bf16", "--resume")) != 0
    assert "different settings (precision)" in capsys.readouterr().err
    assert main(digits_search(run, digits_weights, "--resume")) == 0
