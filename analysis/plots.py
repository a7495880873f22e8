"""The report's figures, drawn with matplotlib's Agg backend (no display needed). Each function writes one
PNG and returns its path; inputs are plain tensors/arrays/lists, so tests can call them directly."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

DPI = 110
CLASS_CMAP = "tab10"


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _hwc(grid_u8: torch.Tensor) -> np.ndarray:
    return grid_u8.permute(1, 2, 0).cpu().numpy()


def image_panels(panels: Sequence[tuple[str, torch.Tensor]], path: Path, title: str = "") -> Path:
    """Uint8 grids (3,H,W) side by side, each with its caption."""
    k = len(panels)
    h, w = panels[0][1].shape[-2:]
    fig, axes = plt.subplots(1, k, figsize=(5.2 * k, 5.2 * h / w + 0.9), squeeze=False)
    for ax, (caption, grid) in zip(axes[0], panels):
        ax.imshow(_hwc(grid), interpolation="nearest")
        ax.set_title(caption, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    return save(fig, path)


def digit_grid(grid_u8: torch.Tensor, rows: int, path: Path, title: str = "") -> Path:
    """A grid of samples whose rows are digits 0..rows-1 (labelled on the left)."""
    fig, ax = plt.subplots(figsize=(7, 7.3))
    img = _hwc(grid_u8)
    ax.imshow(img, interpolation="nearest")
    h = img.shape[0] / rows
    ax.set_yticks([h * (i + 0.5) for i in range(rows)], [str(i) for i in range(rows)])
    ax.set_xticks([])
    ax.set_ylabel("digit")
    ax.set_xlabel("different noise inputs")
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def reverse_process(frames: Sequence[tuple[str, torch.Tensor]], path: Path, title: str = "") -> Path:
    """x_t of one sample at several steps, [-1, 1] images (3,H,W) shown clipped, left (noise) to right (t=0)."""
    k = len(frames)
    fig, axes = plt.subplots(1, k, figsize=(1.9 * k, 2.4), squeeze=False)
    for ax, (caption, x) in zip(axes[0], frames):
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        ax.imshow(img, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def bars(labels: Sequence[str], values: Sequence[float], path: Path, ylabel: str, title: str = "",
         highlight: int | None = None, percent: bool = True) -> Path:
    fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(labels) + 1.5), 3.4))
    colors = ["#4c72b0"] * len(values)
    if highlight is not None:
        colors[highlight] = "#dd8452"
    vals = [v * 100 if percent else v for v in values]
    b = ax.bar(range(len(vals)), vals, color=colors)
    ax.bar_label(b, labels=[f"{v:.1f}%" if percent else f"{v:.3g}" for v in vals], fontsize=8)
    ax.set_xticks(range(len(vals)), labels)
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(0, 105)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def tsne_scatter(emb: np.ndarray, colour: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
    """2-D embedding coloured by an integer code whose names are `names` (digit classes or domains)."""
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    cmap = plt.get_cmap(CLASS_CMAP)
    for code, name in enumerate(names):
        sel = colour == code
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, color=cmap(code % 10), label=name, alpha=0.75, linewidths=0)
    ax.legend(markerscale=3, fontsize=7, loc="best", frameon=True, ncol=2 if len(names) > 5 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def metric_over_time(series: dict[str, list[tuple[int, float]]], metric: str, path: Path, title: str = "",
                     best: str | None = None) -> Path:
    """One line per trial: the metric at each epoch (the best trial drawn thicker)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, pts in series.items():
        if not pts:
            continue
        xs, ys = zip(*pts)
        lw = 2.6 if name == best else 1.2
        ax.plot(xs, ys, marker="o", ms=3, lw=lw, label=name + (" (best)" if name == best else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def pareto_scatter(points: dict[str, tuple[float, float]], front: list[str], names: tuple[str, str], path: Path,
                   title: str = "", pick: str | None = None) -> Path:
    """Every finished trial on two objectives; the Pareto-optimal ones joined as the front, the pick ringed."""
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    others = [p for k, p in points.items() if k not in front]
    if others:
        ax.scatter(*zip(*others), s=22, c="#999999", label="dominated")
    fr = sorted(points[k] for k in front)
    ax.plot(*zip(*fr), "-o", c="C3", ms=6, lw=1.5, label="Pareto front")
    for k in front:
        ax.annotate(k, points[k], fontsize=6, xytext=(3, 3), textcoords="offset points")
    if pick in points:
        ax.scatter(*points[pick], s=160, facecolors="none", edgecolors="k", lw=1.5, label=f"export pick ({pick})")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def optuna_plot(kind: str, study: Any, path: Path, title: str = "", metric: str = "Objective Value") -> Path:
    """Optuna's own matplotlib figure: kind 'importances' or 'parallel', on the study's first objective."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    # optuna draws in the ggplot style (its light colours need the grey background) and switches to it
    # globally; the style context restores ours afterwards
    with warnings.catch_warnings(), plt.style.context("ggplot"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal" with very few trials
        first = {"target": lambda t: t.values[0], "target_name": metric}
        ax = (ovm.plot_param_importances if kind == "importances" else ovm.plot_parallel_coordinate)(study, **first)
        ax = np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax
        if title:  # replaces optuna's own title (left- or centre-aligned)
            for loc in ("left", "center", "right"):
                ax.set_title("", loc=loc)
            ax.set_title(title, fontsize=10)
        fig = ax.figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), max(fig.get_size_inches()[1], 4))
        return save(fig, path)
