"""problems/torchvision_imagefolder.py: any torchvision classifier on an ImageFolder data set.

Tiny random images of mixed sizes in three classes; the file's options are set by copying it
with other values, as a user would. A search through the CLI, then an export whose physically
pruned network scores and costs what the search recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_bn
from PIL import Image

from moprune.cli.main import main
from moprune.data.datasets import load_dataset
from moprune.errors import DataError
from moprune.runs.export import thop_cost
from moprune.zoo.models import build_model

PROBLEM = Path(__file__).resolve().parents[2] / "problems" / "torchvision_imagefolder.py"
CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(20, 48, 2))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def _problem(tmp_path: Path, model: str, size: int, weights: Path | None = None) -> Path:
    text = PROBLEM.read_text()
    for old, new in (('MODEL = "resnet18"', f'MODEL = "{model}"'),
                     ("NUM_CLASSES = 10", f"NUM_CLASSES = {len(CLASSES)}"),
                     ("INPUT_SIZE = 64", f"INPUT_SIZE = {size}"),
                     ("WEIGHTS = None", f"WEIGHTS = {str(weights) if weights else None!r}")):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{model}.py"
    path.write_text(text)
    return path


def test_images_of_any_size_are_fitted_to_the_input_size(folder: Path) -> None:
    bundle = load_dataset("imagefolder", root=folder, seed=0, image_size=(24, 32))
    assert bundle.input_shape == (3, 24, 32) and bundle.num_classes == 3
    assert bundle.train.images.shape[1:] == (3, 24, 32)
    with pytest.raises(DataError, match="one size.*image_size"):
        load_dataset("imagefolder", root=folder, seed=0)  # mixed sizes without resizing


def _distinct_logits_weights(tmp_path: Path, model: str) -> Path:
    """Random weights with BatchNorm statistics and a classifier scaled so that classes do
    not tie (a freshly initialised network's logits differ by about 1e-8)."""
    net = build_model(f"tv:{model}", num_classes=len(CLASSES))
    randomize_bn(net, torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.fc.weight.mul_(100.0)
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def test_search_and_export_a_grouped_convolution_family(folder: Path, tmp_path: Path) -> None:
    weights = _distinct_logits_weights(tmp_path, "regnet_x_400mf")
    problem = _problem(tmp_path, "regnet_x_400mf", 32, weights)
    run = tmp_path / "run"
    assert main(["search", str(problem), "--data-root", str(folder), "--out", str(run),
                 "--generations", "2", "--pop-size", "4", "--eval-images", "6",
                 "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    pruned = [r for r in records if r["macs_ratio"] < 1.0]
    assert pruned, "the search pruned nothing"
    record = min(pruned, key=lambda r: r["macs_ratio"])
    out = tmp_path / "m.pt"
    assert main(["export", str(run), "--id", str(record["id"]), "--out", str(out),
                 "--quiet"]) == 0
    payload = torch.load(out, weights_only=False)
    model = payload["model"]
    assert payload["metrics"]["val_accuracy"] == pytest.approx(record["val_accuracy"],
                                                               abs=1e-12)
    assert thop_cost(model, (3, 32, 32))[0] == record["macs"]
    assert any(isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels
               for m in model.modules())  # grouped convolutions kept their groups


def test_wrong_class_count_is_refused_before_searching(folder: Path, tmp_path: Path,
                                                       capsys) -> None:
    problem = _problem(tmp_path, "mobilenet_v3_small", 32)
    problem.write_text(problem.read_text().replace(f"NUM_CLASSES = {len(CLASSES)}",
                                                   "NUM_CLASSES = 5"))
    status = main(["search", str(problem), "--data-root", str(folder), "--out",
                   str(tmp_path / "run"), "--generations", "1", "--pop-size", "4", "--quiet"])
    assert status == 2
    assert "5 outputs" in capsys.readouterr().err
