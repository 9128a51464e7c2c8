"""The code in the docs must keep working: the example script and the guide's problem file."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moprune.tasks.setup import make_problem
from moprune.tasks.task import DataRequest, TaskOptions, load_problem_file

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_torchvision_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/examples/torchvision_problem.py (quoted in docs/guide.md) runs to the end."""
    # One intra-op thread: many tiny convolutions, and OpenMP threads waiting on a busy
    # machine can make them 30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(DOCS / "examples" / "torchvision_problem.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "PruningSpace(8 groups, 1920 channels" in out
    assert "knee: kept" in out and "SMS-EMOA" in out


def _guide_problem_file() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "guide.md").read_text(), flags=re.S)
    found = [b for b in blocks if "def build_task(options: TaskOptions)" in b]
    assert len(found) == 1, "docs/guide.md must hold exactly one problem-file example"
    return found[0]


def _fake_imagefolder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_guide_problem_file_builds_a_problem(tmp_path: Path) -> None:
    """The problem file shown in docs/guide.md loads, reads an ImageFolder and builds."""
    path = tmp_path / "resnet18_cifar10.py"
    path.write_text(_guide_problem_file())
    data_root = tmp_path / "data"
    _fake_imagefolder(data_root, {"train": 5, "test": 1})
    task = load_problem_file(path, TaskOptions())
    data = task.load_data(DataRequest(root=data_root, seed=0, eval_images=8, test_images=4))
    assert (len(data.val), len(data.test), len(data.train)) == (8, 4, 0)
    setup = make_problem(task, data)
    assert setup.problem.n_var == setup.space.n_channels == 1920
    assert setup.problem.baseline["macs"] == 37_220_352


def _run_python_example(page: str, tmp_path, monkeypatch, capsys) -> str:
    """Run the one Python block of ``docs/PAGE`` from a scratch folder; return its output."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace('"problems/digits_demo.py"',
                             repr(str(DOCS.parent / "problems" / "digits_demo.py")))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"docs/{page}", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def test_ccep_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """The Python example of docs/ccep.md runs (from a scratch folder) and prunes."""
    out = _run_python_example("ccep.md", tmp_path, monkeypatch, capsys)
    ratios = [float(m) for m in re.findall(r"MACs ratio ([0-9.]+)", out)]
    assert ratios[0] == 1.0 and ratios[-1] <= 0.75
    assert "keeps" in out


def test_deeppruninges_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """The Python example of docs/deeppruninges.md runs and returns three elites."""
    out = _run_python_example("deeppruninges.md", tmp_path, monkeypatch, capsys)
    for role in ("heavy", "light", "knee"):
        assert f"{role}: keeps" in out
    ratios = [float(m) for m in re.findall(r"MACs ratio ([0-9.]+)", out)]
    assert len(ratios) == 3 and min(ratios) < 1.0
    assert re.search(r"\{'heavy': \d+, 'light': \d+, 'knee': \d+\}", out)


def test_evofc_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """The Python example of docs/evofc.md runs: the supernet trains every candidate."""
    out = _run_python_example("evofc.md", tmp_path, monkeypatch, capsys)
    assert re.search(r"supernet trained 24 candidates, \d+ steps", out)
    rows = re.findall(r"error ([0-9.]+), MACs ratio ([0-9.]+): (.*)", out)
    assert rows and min(float(r[1]) for r in rows) < 1.0
    assert min(float(r[0]) for r in rows) < 0.5  # trained from random init: far above chance
    assert all(" by grad_" in r[2] for r in rows)


def test_gp_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """The Python example of docs/gp.md evolves, saves and reloads a function as a criterion."""
    out = _run_python_example("gp.md", tmp_path, monkeypatch, capsys)
    found = re.search(r"best seed ([0-9.]+), evolved ([0-9.]+): (.+)", out)
    assert found, out
    assert float(found.group(2)) >= float(found.group(1)) > 0.1
    assert "scored 80 channels" in out
    assert (tmp_path / "evolved.gp.json").is_file()


def test_distributed_api_example_runs(tmp_path, monkeypatch, capsys) -> None:
    """The Python example of docs/distributed.md runs on a local cluster, same front."""
    pytest.importorskip("distributed")
    out = _run_python_example("distributed.md", tmp_path, monkeypatch, capsys)
    assert "on 2 workers; same front as one process: True" in out
