"""analysis/benchmark_speed.py in --quick mode: every part runs and the report is spliced in."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import one_torch_thread

ANALYSIS = Path(__file__).resolve().parents[2] / "analysis"
if str(ANALYSIS) not in sys.path:
    sys.path.insert(0, str(ANALYSIS))

import benchmark_speed  # noqa: E402

CPU_BEGIN = "<!-- benchmark_speed:cpu:begin -->"
FAKE_CUDA = ("<!-- benchmark_speed:cuda:begin -->\n## a GPU section written before\n\n"
             "| kept | table |\n|---|---|\n| 1 | 2 |\n<!-- benchmark_speed:cuda:end -->\n")
INTRO = "Intro paragraph written by someone else; it must survive.\n"


def section(text: str, key: str) -> str:
    begin = f"<!-- benchmark_speed:{key}:begin -->"
    end = f"<!-- benchmark_speed:{key}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    return text[text.index(begin):text.index(end) + len(end)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny networks: threads do not pay off, and spinning OpenMP workers on a busy machine
    # make the run several times slower
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b.md"
    returned = benchmark_speed.main(["--quick", "--device", "cpu", "--out", str(out)])
    assert returned == out
    return out


def test_every_part_is_reported(quick_run: Path) -> None:
    text = quick_run.read_text()
    assert text.startswith("# Benchmarks\n")
    cpu = section(text, "cpu")
    assert "## Speed benchmark on the CPU" in cpu
    assert "--quick --device cpu" in cpu and "Git commit:" in cpu and "thop" in cpu
    headers = [f"### {t}" for t in benchmark_speed.PART_TITLES.values()]
    positions = [cpu.index(h) for h in headers]
    assert positions == sorted(positions)
    chunks = [cpu[a:b] for a, b in zip(positions, positions[1:] + [len(cpu)])]
    for header, chunk in zip(headers, chunks):
        assert re.search(r"^\|(-{3}:?\|)+$", chunk, flags=re.M), f"no table under {header}"
    assert "### What the numbers mean" in cpu
    assert "failed" not in cpu.lower()
    for row in ("| naive |", "| slice fp32 |", "| slice bf16 channels-last |",
                "| gate, population 1 |", "| gate, population 4 |"):
        assert row in cpu
    assert "n/a (GPU only)" in cpu


def test_cost_model_equals_thop(quick_run: Path) -> None:
    cpu = section(quick_run.read_text(), "cpu")
    m = re.search(r"^\| max abs difference, MACs \(CostModel - thop\) \| (\d+) \|$", cpu, re.M)
    assert m is not None and int(m.group(1)) == 0
    m = re.search(r"^\| max abs difference, params \| (\d+) \|$", cpu, re.M)
    assert m is not None and int(m.group(1)) == 0
    m = re.search(r"^\| plans with MACs and params exactly equal \| (\d+) of (\d+) \|$", cpu, re.M)
    assert m is not None and m.group(1) == m.group(2)


def test_plots_are_written_and_linked(quick_run: Path) -> None:
    img = quick_run.parent / "img"
    for ext in ("png", "svg"):
        path = img / f"benchmark-scaling-cpu.{ext}"
        assert path.is_file() and path.stat().st_size > 1000
    assert "](img/benchmark-scaling-cpu.png)" in quick_run.read_text()


def test_rerun_replaces_only_its_section(quick_run: Path, tmp_path: Path) -> None:
    old_cpu = section(quick_run.read_text(), "cpu")
    out = tmp_path / "b.md"
    before = f"# My benchmarks\n\n{INTRO}\n{old_cpu}\n\nText between.\n\n{FAKE_CUDA}\nTail.\n"
    out.write_text(before)
    benchmark_speed.main(["--quick", "--device", "cpu", "--parts", "2", "--out", str(out)])
    after = out.read_text()
    assert after.startswith(f"# My benchmarks\n\n{INTRO}\n")
    assert section(after, "cuda") == FAKE_CUDA.rstrip("\n")
    assert "\n\nText between.\n\n" in after and after.endswith("Tail.\n")
    new_cpu = section(after, "cpu")
    assert new_cpu != old_cpu
    assert "### Part 2: cost model against thop" in new_cpu
    assert "### Part 1" not in new_cpu and "### Part 5" not in new_cpu
    # the rest of the file is byte-identical
    assert after.replace(new_cpu, "@") == before.replace(old_cpu, "@")
    assert not list(tmp_path.glob("*.tmp"))


def test_write_section_creates_and_appends(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "new.md"
    benchmark_speed.write_section(out, "cuda", "## gpu\n")
    benchmark_speed.write_section(out, "cpu", "## cpu 1\n")
    benchmark_speed.write_section(out, "cpu", "## cpu 2\n")
    text = out.read_text()
    assert text.startswith("# Benchmarks\n")
    assert section(text, "cuda") == ("<!-- benchmark_speed:cuda:begin -->\n## gpu\n"
                                     "<!-- benchmark_speed:cuda:end -->")
    assert "## cpu 2" in section(text, "cpu") and "## cpu 1" not in text
    assert text.index("cuda:begin") < text.index("cpu:begin")


def test_unbalanced_markers_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    out.write_text(f"# Benchmarks\n\n{CPU_BEGIN}\nno end marker\n")
    with pytest.raises(ValueError, match="no <!-- benchmark_speed:cpu:end -->"):
        benchmark_speed.write_section(out, "cpu", "x")
    assert out.read_text() == f"# Benchmarks\n\n{CPU_BEGIN}\nno end marker\n"


def test_bad_parts_are_refused() -> None:
    with pytest.raises(SystemExit):
        benchmark_speed.main(["--quick", "--parts", "1,9", "--out", "/nonexistent/x.md"])


@pytest.mark.parametrize(("name", "bf16"), [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", None),
    ("Tesla T4", None)])
def test_gpu_peak_table(name: str, bf16: float | None) -> None:
    peak = benchmark_speed.peak_of_name(name)
    assert (peak[1] if peak else None) == bf16
