"""Figures (Pareto front, hypervolume, kept channels) and a plain-text table formatter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from moprune.core.objectives import Objective
from moprune.errors import ConfigError
from moprune.fronts.front import front_records

_FRONT_COLOR = "tab:blue"
_PICK_COLORS = ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink")


def _save(fig: Figure, out_stem: Path) -> list[Path]:
    """Write ``out_stem.png`` (dpi 150) and ``out_stem.svg``; return both paths."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.parent / f"{out_stem.name}.png", out_stem.parent / f"{out_stem.name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def _reduction(record: dict) -> float:
    return 100.0 * (1.0 - float(record["macs_ratio"]))


def plot_front(
    records: list[dict],
    baseline: dict,
    out_stem: Path,
    picks: dict[str, dict] | None = None,
    title: str | None = None,
    objective: Objective | None = None,
) -> list[Path]:
    """Plot validation accuracy against a cost for all candidates and the front.

    Args:
        records: All evaluated candidate records.
        baseline: The unpruned model (``val_accuracy``), drawn as a star at 0 % reduction.
        out_stem: Output path without suffix; ``.png`` and ``.svg`` are written.
        picks: Chosen records by label (e.g. ``{"knee": rec, "macs<=0.5": rec}``), annotated.
        title: Figure title.
        objective: The cost on the x axis and of the front (with error); default: MACs
            reduction in percent (the ``macs_ratio`` objective).

    Returns:
        The PNG and SVG paths.

    """
    if objective is None:
        x_of, xlabel, xfmt = _reduction, "MACs reduction (%)", ".1f"
        base_x: float | None = 0.0
        front = front_records(records) if records else []
    else:
        x_of, xlabel, xfmt = objective.value, f"{objective.label} ({objective.unit})", ".3g"
        base_x = objective.value({**baseline, "macs_ratio": 1.0, "params_ratio": 1.0}) \
            if objective.read is not None else None
        front = front_records(records, ("error", objective.name)) if records else []
        front = sorted(front, key=x_of)
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.add_subplot()
    if records:
        ax.scatter(
            [x_of(r) for r in records],
            [100 * r["val_accuracy"] for r in records],
            s=10, color="0.75", label="candidates", zorder=1,
        )
    if front:
        ax.plot(
            [x_of(r) for r in front],
            [100 * r["val_accuracy"] for r in front],
            "-o", color=_FRONT_COLOR, ms=4, lw=1.5, label="front (val)", zorder=3,
        )
        tested = [r for r in front if r.get("test_accuracy") is not None]
        if tested:
            ax.scatter(
                [x_of(r) for r in tested],
                [100 * r["test_accuracy"] for r in tested],
                s=30, facecolors="none", edgecolors=_FRONT_COLOR, label="front (test)", zorder=3,
            )
    base_acc = 100 * float(baseline["val_accuracy"])
    ax.axhline(base_acc, ls="--", lw=1, color="k", alpha=0.6, zorder=2)
    if base_x is not None:
        ax.scatter([base_x], [base_acc], marker="*", s=160, color="k", label="baseline",
                   zorder=4)
    for k, (name, rec) in enumerate((picks or {}).items()):
        x, y = x_of(rec), 100 * rec["val_accuracy"]
        color = _PICK_COLORS[k % len(_PICK_COLORS)]
        ax.scatter([x], [y], s=70, color=color, edgecolors="k", zorder=5)
        ax.annotate(
            f"{name}\n{x:{xfmt}}{'%' if objective is None else ''}, {y:.2f}%", (x, y),
            xytext=(12, -28 - 14 * (k % 3)),
            textcoords="offset points", fontsize=8, color=color,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": color, "alpha": 0.85},
            arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8},
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, out_stem)


def plot_hypervolume(history: list[tuple[int, float]], out_stem: Path) -> list[Path]:
    """Plot the hypervolume of the cumulative archive per generation.

    Args:
        history: ``[(generation, hypervolume), ...]`` from
            :func:`moprune.fronts.front.hypervolume_history`.
        out_stem: Output path without suffix; ``.png`` and ``.svg`` are written.

    Returns:
        The PNG and SVG paths.

    """
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot()
    if history:
        gens, hvs = zip(*history, strict=True)
        ax.plot(gens, hvs, "-o", ms=3, color=_FRONT_COLOR)
    ax.set_xlabel("generation")
    ax.set_ylabel("hypervolume")
    ax.grid(True, alpha=0.3)
    return _save(fig, out_stem)


def plot_rounds(
    rounds: list[dict],
    baseline: dict,
    out_stem: Path,
    reference: tuple[float, float] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Accuracy against MACs reduction over the rounds of a round-based search (CCEP).

    Args:
        rounds: One record per round (``round``, ``macs_ratio``, ``val_accuracy``, optional
            ``test_accuracy`` and ``spliced_val_accuracy``: hold-out accuracy right after the
            round's pruning, before fine-tuning).
        baseline: The starting network (``val_accuracy``, optional ``test_accuracy``).
        out_stem: Output path without suffix; ``.png`` and ``.svg`` are written.
        reference: A published ``(MACs reduction %, accuracy change in points)`` to mark
            against the test line (e.g. CCEP's ResNet-56: (63.42, +0.24)).
        title: Figure title.

    Returns:
        The PNG and SVG paths.

    """
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.add_subplot()
    rounds = sorted(rounds, key=lambda r: r["round"])
    xs = [_reduction(r) for r in rounds]
    ax.plot(xs, [100 * r["val_accuracy"] for r in rounds], "-o", ms=4, color=_FRONT_COLOR,
            label="hold-out (after fine-tuning)")
    tested = [r for r in rounds if r.get("test_accuracy") is not None]
    if tested:
        ax.plot([_reduction(r) for r in tested], [100 * r["test_accuracy"] for r in tested],
                "-s", ms=4, color="tab:orange", label="test (after fine-tuning)")
    spliced = [r for r in rounds if r.get("spliced_val_accuracy") is not None]
    if spliced:
        ax.scatter([_reduction(r) for r in spliced],
                   [100 * r["spliced_val_accuracy"] for r in spliced], s=22,
                   facecolors="none", edgecolors=_FRONT_COLOR,
                   label="hold-out right after pruning")
    for r, x in zip(rounds, xs):
        ax.annotate(str(r["round"]), (x, 100 * r["val_accuracy"]), xytext=(0, 5),
                    textcoords="offset points", fontsize=7, ha="center", color="0.3")
    ax.axhline(100 * float(baseline["val_accuracy"]), ls="--", lw=1, color=_FRONT_COLOR,
               alpha=0.5)
    if baseline.get("test_accuracy") is not None:
        base_test = 100 * float(baseline["test_accuracy"])
        ax.axhline(base_test, ls="--", lw=1, color="tab:orange", alpha=0.5)
        if reference is not None:
            ax.scatter([reference[0]], [base_test + reference[1]], marker="*", s=140,
                       color="tab:red", zorder=5,
                       label=f"published: {reference[0]:.2f}% fewer, {reference[1]:+.2f} pts")
    ax.set_xlabel("MACs reduction (%) - numbers: round")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, out_stem)


_ROLE_COLORS = {"heavy": "tab:red", "knee": "tab:purple", "light": "tab:green"}


def plot_elites_history(
    elites: list[dict],
    baseline: dict,
    out_stem: Path,
    title: str | None = None,
) -> list[Path]:
    """The heavy, light and knee elites of every generation (DeepPruningES's progress).

    Args:
        elites: One row per generation: ``generation`` and, per role, ``{"id",
            "val_accuracy", "macs_ratio"}`` (the run's ``elites.jsonl``).
        baseline: The unpruned model (``val_accuracy``).
        out_stem: Output path without suffix; ``.png`` and ``.svg`` are written.
        title: Figure title.

    Returns:
        The PNG and SVG paths.

    """
    fig = Figure(figsize=(8.0, 3.8))
    ax_acc, ax_red = fig.subplots(1, 2)
    rows = sorted(elites, key=lambda r: r["generation"])
    gens = [r["generation"] - 1 for r in rows]  # generation 0 = the unpruned population
    for role, color in _ROLE_COLORS.items():
        ax_acc.plot(gens, [100 * r[role]["val_accuracy"] for r in rows], "-o", ms=3,
                    color=color, label=role)
        ax_red.plot(gens, [_reduction(r[role]) for r in rows], "-o", ms=3, color=color,
                    label=role)
    ax_acc.axhline(100 * float(baseline["val_accuracy"]), ls="--", lw=1, color="k", alpha=0.6,
                   label="baseline")
    ax_acc.set_ylabel("hold-out accuracy (%)")
    ax_red.set_ylabel("MACs reduction (%)")
    for ax in (ax_acc, ax_red):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("generation")
        ax.grid(True, alpha=0.3)
    ax_acc.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_stem)


def plot_trade_offs(
    front: list[dict],
    baseline: dict,
    models: dict[str, tuple[dict, dict | None]],
    out_stem: Path,
    title: str | None = None,
) -> list[Path]:
    """The heavy, knee and light models against the baseline and the whole front.

    Args:
        front: The run's front records (``val_accuracy``, optional ``test_accuracy``).
        baseline: The unpruned model (``val_accuracy``, optional ``test_accuracy``).
        models: ``{role: (record, metrics)}``; ``metrics`` of the exported network (its
            ``macs_ratio`` and ``test_accuracy``, e.g. after final retraining) or None.
        out_stem: Output path without suffix; ``.png`` and ``.svg`` are written.
        title: Figure title.

    Returns:
        The PNG and SVG paths.

    """
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.add_subplot()
    front = sorted(front, key=lambda r: r["macs_ratio"])
    ax.plot([_reduction(r) for r in front], [100 * r["val_accuracy"] for r in front], "-o",
            ms=3, lw=1.2, color="0.6", label="front (hold-out, search)", zorder=2)
    tested = [r for r in front if r.get("test_accuracy") is not None]
    if tested:
        ax.scatter([_reduction(r) for r in tested], [100 * r["test_accuracy"] for r in tested],
                   s=14, facecolors="none", edgecolors="0.6", label="front (test, search)",
                   zorder=2)
    ax.axhline(100 * float(baseline["val_accuracy"]), ls="--", lw=1, color="k", alpha=0.5)
    ax.scatter([0.0], [100 * float(baseline["val_accuracy"])], marker="*", s=160, color="k",
               label="baseline (hold-out)", zorder=4)
    if baseline.get("test_accuracy") is not None:
        ax.scatter([0.0], [100 * float(baseline["test_accuracy"])], marker="*", s=160,
                   facecolors="none", edgecolors="k", label="baseline (test)", zorder=4)
    for role, (record, metrics) in models.items():
        color = _ROLE_COLORS.get(role, "tab:blue")
        x, y = _reduction(record), 100 * record["val_accuracy"]
        ax.scatter([x], [y], s=70, color=color, edgecolors="k", zorder=5)
        ax.annotate(f"{role}\n{x:.1f}%, {y:.2f}%", (x, y), xytext=(10, 10),
                    textcoords="offset points", fontsize=8, color=color)
        if metrics is not None:
            xe, ye = _reduction(metrics), 100 * metrics["test_accuracy"]
            ax.scatter([xe], [ye], s=60, marker="s", color=color, edgecolors="k", zorder=5,
                       label=f"{role} exported (test)")
            ax.annotate("", (xe, ye), (x, y),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 0.8})
    ax.set_xlabel("MACs reduction (%)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, out_stem)


def plot_kept_channels(
    group_names: Sequence[str],
    kept: Sequence[int],
    total: Sequence[int],
    out_stem: Path,
    title: str | None = None,
) -> list[Path]:
    """Horizontal bars per channel group: total channels (light) and kept channels (dark).

    The figure grows with the number of groups so that 60+ groups (ResNet-110) stay readable.

    Raises:
        ValueError: The three sequences differ in length, or some ``kept`` exceeds ``total``.

    """
    n = len(group_names)
    if len(kept) != n or len(total) != n:
        raise ConfigError(
            f"plot_kept_channels: expected one kept and one total count per group, got "
            f"{n} names, {len(kept)} kept, {len(total)} total"
        )
    bad = [g for g, k, t in zip(group_names, kept, total, strict=True) if not 0 <= k <= t]
    if bad:
        raise ConfigError(f"plot_kept_channels: kept must be in [0, total]; offending groups {bad}")
    fig = Figure(figsize=(7.0, max(2.5, 0.6 + 0.2 * n)))
    ax = fig.add_subplot()
    ys = list(range(n))
    ax.barh(ys, list(total), height=0.8, color="#c6dbef", label="total")
    ax.barh(ys, list(kept), height=0.8, color="#08519c", label="kept")
    ax.set_yticks(ys)
    ax.set_yticklabels(list(group_names), fontsize=7 if n > 20 else 9)
    ax.set_ylim(n - 0.5, -0.5)  # first group at the top
    ax.set_xlabel("channels")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    kept_sum, total_sum = sum(kept), sum(total)
    share = f"kept {kept_sum}/{total_sum} channels ({100 * kept_sum / max(total_sum, 1):.1f}%)"
    ax.set_title(f"{title}\n{share}" if title else share, fontsize=10)
    return _save(fig, out_stem)


def format_table(rows: list[dict], columns: Sequence[tuple[str, str, str]],
                 markdown: bool = False) -> str:
    """Format rows as an aligned plain-text (or Markdown) table.

    Args:
        rows: One dict per row.
        columns: ``(key, header, format_spec)`` per column, e.g. ``("val_accuracy", "val acc",
            ".2%")``; a missing or ``None`` value prints as ``-``. Text is left-aligned,
            numbers right-aligned.

        markdown: Write a Markdown table (``| a | b |``, numbers right-aligned) instead.

    Returns:
        Header, a dashed rule and one line per row, joined by newlines (no trailing newline).

    """
    cells: list[list[str]] = []
    numeric = [False] * len(columns)
    for row in rows:
        line = []
        for j, (key, _header, spec) in enumerate(columns):
            value = row.get(key)
            if value is None:
                line.append("-")
                continue
            try:
                line.append(format(value, spec))
            except (ValueError, TypeError) as err:
                raise ConfigError(
                    f"format_table: column {key!r} value {value!r} does not fit format spec "
                    f"{spec!r} ({err}); fix the spec in the columns list"
                ) from None
            numeric[j] = numeric[j] or not isinstance(value, str)
        cells.append(line)
    headers = [header for _key, header, _spec in columns]
    widths = [max([len(headers[j])] + [len(c[j]) for c in cells]) for j in range(len(columns))]

    def fmt(line: Sequence[str]) -> str:
        parts = [
            s.rjust(w) if num else s.ljust(w)
            for s, w, num in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    if markdown:
        rule = ["-" * max(3, w - 1) + (":" if num else "-") for w, num in zip(widths, numeric,
                                                                              strict=True)]
        return "\n".join("| " + " | ".join(line) + " |" for line in [headers, rule, *cells])
    out = [fmt(headers), "  ".join("-" * w for w in widths)]
    out.extend(fmt(line) for line in cells)
    return "\n".join(out)
