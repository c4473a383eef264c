"""Plots of a result (matplotlib): per-class bars and the confusion-flow heat map.

The figures are built with matplotlib's object-oriented API, outside pyplot: no backend is
selected or changed (a notebook keeps its inline backend), nothing is left open in pyplot, and a
:class:`ReportFigure` shows itself as an image when it is a notebook cell's last expression.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from rfbench.core.io.atomic import atomic_write_bytes
from rfbench.core.perclass import pct, to_percent

#: class, attack and dataset names are the user's text: never parsed as mathtext (``$\\evil{$``) or LaTeX
PLAIN_TEXT_RC: dict[Any, Any] = {"text.parse_math": False, "text.usetex": False}


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Inside this block every text matplotlib creates or draws is shown as written, never parsed as markup."""
    with matplotlib.rc_context(PLAIN_TEXT_RC):
        yield


def plain_text_figure(fn):
    """Decorator: ``fn`` builds its figure inside :func:`plain_text`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plain_text():
            return fn(*args, **kwargs)
    return wrapper


class ReportFigure(Figure):
    """A matplotlib figure that Jupyter/IPython displays as a PNG (``_repr_png_``)."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def png_bytes(fig: Figure, dpi: int = 130) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buf = io.BytesIO()
    with plain_text():
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 130) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run never leaves half an image)."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig, dpi))
    return path


def plot_per_class(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`per_class_figure` as a PNG."""
    return save_figure(per_class_figure(result), path)


def plot_confusion_flow(result: Mapping[str, Any], path: str | Path, name: str = "worst_case") -> Path:
    """Write :func:`confusion_flow_figure` as a PNG."""
    return save_figure(confusion_flow_figure(result, name), path)


@plain_text_figure
def per_class_figure(result: Mapping[str, Any]):
    """Clean vs worst-case robust accuracy per class, sorted from the weakest class, with 95% intervals.

    The per-attack accuracies are drawn as markers on the robust bar, so one
    sees which classes the stronger attacks gain on.  Returns the matplotlib figure.
    """
    classes = result["classes"]
    clean = np.array(result["per_class"]["clean"], dtype=float)
    robust = np.array(result["per_class"]["worst_case"], dtype=float)
    ci_c = np.array(result["per_class_ci95"]["clean"], dtype=float)
    ci_r = np.array(result["per_class_ci95"]["worst_case"], dtype=float)
    order = np.argsort(np.nan_to_num(robust, nan=np.inf), kind="stable")
    x = np.arange(len(classes))
    w = 0.38
    fig = ReportFigure(figsize=(max(6.0, 0.7 * len(classes) + 2), 4.2))
    ax = fig.subplots()
    for off, acc, ci, lab, color in ((-w / 2, clean, ci_c, "clean", "#9ecae1"), (w / 2, robust, ci_r, "robust (worst case)", "#de2d26")):
        a, c = acc[order], ci[order]
        err = np.vstack([a - c[:, 0], c[:, 1] - a]).clip(min=0)
        ax.bar(x + off, to_percent(a), w, yerr=to_percent(err), capsize=2, label=lab, color=color, edgecolor="black", linewidth=0.4)
    markers = "o^sDv<>"
    attack_names = [n for n in result["names"] if n not in ("clean", "worst_case")]
    for i, name in enumerate(attack_names):
        acc = np.array(result["per_class"][name], dtype=float)[order]
        ax.scatter(x + w / 2, to_percent(acc), marker=markers[i % len(markers)], s=14, zorder=3, label=name, color=f"C{i}")
    ax.set_xticks(x, [classes[k] for k in order], rotation=35, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 104)
    s = result["summary"]["worst_case"]
    ax.set_title(f"{result.get('dataset', '')}: per-class accuracy, eps {result['threat'].get('eps_str', result['threat']['eps'])} ({result['threat']['norm']}); "
                 f"robust mean {pct(s['mean'])}%, worst {pct(s['worst'])}%", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


@plain_text_figure
def confusion_flow_figure(result: Mapping[str, Any], name: str = "worst_case"):
    """Heat map of the confusion flow: share of each true class's samples predicted as each class under attack.

    The diagonal (robust samples) is masked so the flow between classes is visible.
    """
    classes = result["classes"]
    m = np.array(result["confusion"][name], dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    flow = np.ma.masked_array(share, mask=np.eye(len(classes), dtype=bool))
    fig = ReportFigure(figsize=(max(5.0, 0.55 * len(classes) + 2.5), max(4.2, 0.5 * len(classes) + 1.5)))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="#d9d9d9")  # grey: the hidden diagonal
    im = ax.imshow(to_percent(flow), cmap=cmap, vmin=0)
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if i != j and share[i, j] >= 0.005:
                    ax.text(j, i, pct(share[i, j], 0), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 * flow.max() else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted class under attack")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion flow ({name}): % of each true class predicted as another (diagonal in grey)", fontsize=9)
    fig.colorbar(im, ax=ax, label="% of true class")
    return fig
