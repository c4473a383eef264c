"""Tensor-level evaluation: ``rfbench.evaluate(model, x, y, eps=...)`` and ``rfbench.evaluate_loader``.

The same harness as ``rfbench eval`` (:func:`rfbench.benchmark.eval.harness.evaluate_data`),
called on tensors instead of a registered dataset::

    import rfbench
    report = rfbench.evaluate(model, x_test, y_test, eps=8/255, attacks=["pgd", "cw"])
    report.per_class                 # pandas DataFrame: one row per class, fractions
    report.worst_case                # {'class': 'cat', 'accuracy': 0.41, 'ci95': [...], ...}
    print(report.to_markdown())

    # standard AutoAttack per class, as AutoAttack's run_standard_evaluation would run it
    report = rfbench.evaluate(model, x_test, y_test, eps=8/255, version="standard")

* ``x``: ``N×C×H×W`` images, uint8 (scaled to [0,1] automatically) or float in
  [0,1]; the model maps [0,1] inputs to logits (normalisation inside the model).
* ``y``: integer labels; ``classes``: class names (or their number); by default the
  model's output size, named ``"0"``, ``"1"``, ...
* ``eps`` (required), ``norm`` (``linf``/``l2``), ``steps`` and ``alpha`` make the
  threat model every attack starts from (alpha defaults to eps/4, the ratio of the
  common 8/255 and 2/255 setting; the step-size rule of :mod:`rfbench.core.threat`).
* ``attacks``: attack specs as on the command line (``"pgd:steps=50"``,
  ``"autoattack"``); default fgsm, pgd, cw.  ``version="standard"`` (or ``"plus"``)
  adds AutoAttack of that version; with no ``attacks`` it is the only attack, so
  the call is AutoAttack's standard evaluation, reported per class.
* ``out``: a directory; only then are files written (``result.json``, tables, the
  per-sample flag file), and a call with the same arguments resumes a killed one.

Returns a :class:`Report`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from rfbench.benchmark.eval.harness import EvalConfig, EvalData, evaluate_data
from rfbench.benchmark.eval.result import markdown_table
from rfbench.benchmark.eval.result import per_class_frame as _per_class_frame
from rfbench.benchmark.eval.shard import Shard
from rfbench.core.errors import ConfigError, RfbenchError
from rfbench.core.io.atomic import atomic_write_text, read_json
from rfbench.core.threat import OTHER_NORM_RATIO, Threat, ThreatDefaults, resolve_threat

DEFAULT_STEPS = 20


@dataclass
class Report:
    """The result of an evaluation (the ``rfbench.result/2`` dictionary) with tables and plots.

    ``result`` is exactly what ``result.json`` holds; ``out`` the directory it was
    written to (None for an in-memory evaluation).
    """

    result: dict[str, Any]
    out: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        """A report from a ``result.json`` (or the directory holding it)."""
        path = Path(path)
        path = path / "result.json" if path.is_dir() else path
        return cls(read_json(path), path.parent)

    # -- tables (fractions) --------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """``clean``, the attack labels in run order, ``worst_case``."""
        return list(self.result["names"])

    @property
    def per_class(self) -> pd.DataFrame:
        """One row per class: ``class``, ``n``, clean, every attack, worst case, boundary error, ... (fractions)."""
        return _per_class_frame(self.result)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per name: mean (balanced), worst, worst class, best, gap, std, nsd, tail20, worst-class 95% CI."""
        rows = []
        for name in self.names:
            s = dict(self.result["summary"][name])
            s["worst_class"] = self.result["classes"][s["worst_class"]]
            if "best_class" in s:
                s["best_class"] = self.result["classes"][s["best_class"]]
            lo, hi = s.pop("worst_ci95", [np.nan, np.nan])
            rows.append({"name": name, **s, "worst_ci95_lo": lo, "worst_ci95_hi": hi})
        return pd.DataFrame(rows).set_index("name")

    @property
    def intervals(self) -> pd.DataFrame:
        """Per-class 95% intervals (as the result computes them): columns ``(name, "lo")`` and ``(name, "hi")``, one row per class."""
        cols = {}
        for name in self.names:
            ci = np.asarray(self.result["per_class_ci95"][name], dtype=float)
            cols[(name, "lo")], cols[(name, "hi")] = ci[:, 0], ci[:, 1]
        df = pd.DataFrame(cols, index=pd.Index(self.result["classes"], name="class"))
        df.columns = pd.MultiIndex.from_tuples(df.columns)
        return df

    @property
    def worst_case(self) -> dict[str, Any]:
        """The weakest class under the worst case over the attacks: its name, accuracy and 95% interval."""
        s = self.result["summary"]["worst_case"]
        return {"class": self.result["classes"][s["worst_class"]], "class_index": s["worst_class"],
                "accuracy": s["worst"], "ci95": list(s["worst_ci95"]), "mean": s["mean"], "gap": s["gap"],
                "over": list(self.result["worst_case_over"])}

    @property
    def clean_accuracy(self) -> float:
        """Balanced (per-class mean) clean accuracy, a fraction."""
        return float(self.result["summary"]["clean"]["mean"])

    @property
    def robust_accuracy(self) -> float:
        """Balanced (per-class mean) worst-case robust accuracy, a fraction."""
        return float(self.result["summary"]["worst_case"]["mean"])

    @property
    def checks(self) -> dict[str, Any]:
        return self.result["checks"]

    # -- renderings --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.result

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The result as JSON text (fractions); written atomically to ``path`` when given."""
        from rfbench.core.io.atomic import _jsonable

        text = json.dumps(_jsonable(self.result), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def to_markdown(self) -> str:
        """The per-class table in percent with summary rows and the worst-case footer (what ``rfbench eval`` prints)."""
        return markdown_table(self.result)

    def plot(self, path: str | Path | None = None, kind: str = "per_class"):
        """``per_class`` bars (clean vs worst case, 95% intervals) or the ``confusion`` flow; the matplotlib figure.

        With ``path`` the figure is written as a PNG (and closed) and the path returned.
        """
        from rfbench.benchmark.eval import plots

        makers = {"per_class": plots.per_class_figure, "confusion": plots.confusion_flow_figure}
        if kind not in makers:
            raise ConfigError(f"plot kind must be one of {', '.join(makers)}, got {kind!r}")
        fig = makers[kind](self.result)
        return plots.save_figure(fig, path) if path is not None else fig

    def __repr__(self) -> str:
        w = self.worst_case
        return (f"Report({self.result.get('dataset')}, {self.result['n_samples']} samples, {len(self.result['classes'])} "
                f"classes, eps {self.result['threat']['eps_str']} {self.result['threat']['norm']}: clean {self.clean_accuracy:.3f}, "
                f"robust {self.robust_accuracy:.3f}, worst class {w['class']} {w['accuracy']:.3f}; "
                f"checks {self.result['checks']['overall']})")

    def _repr_markdown_(self) -> str:  # Jupyter
        return self.to_markdown()


def _as_tensor(a: Any, name: str) -> torch.Tensor:
    if torch.is_tensor(a):
        return a.detach().cpu()
    if isinstance(a, np.ndarray) or isinstance(a, (list, tuple)):
        return torch.as_tensor(np.asarray(a))
    raise RfbenchError(f"{name} must be a torch tensor or a NumPy array, got {type(a).__name__}")


def _class_names(classes: Sequence[str] | int | None, model: torch.nn.Module, x: torch.Tensor, device) -> list[str]:
    if isinstance(classes, int):
        return [str(i) for i in range(classes)]
    if classes is not None:
        return [str(c) for c in classes]
    x0 = x[:1].to(device)
    x0 = x0.float().div(255) if x0.dtype == torch.uint8 else x0.float()
    with torch.no_grad():
        out = model.to(device).eval()(x0)
    if not torch.is_tensor(out) or out.ndim != 2:
        raise RfbenchError("could not read the number of classes from the model's output; pass classes=[...]")
    return [str(i) for i in range(int(out.shape[1]))]


def _threat(eps: float | None, norm: str, steps: int | None, alpha: float | None) -> Threat:
    if eps is None:
        raise ConfigError("evaluate needs eps= (e.g. eps=8/255 for CIFAR-10 Linf); there is no dataset protocol to take it from")
    norm = norm.lower()
    eps = float(eps)
    defaults = ThreatDefaults(norm=norm, eps=eps, eval_steps=int(steps or DEFAULT_STEPS),
                              eval_alpha=eps * OTHER_NORM_RATIO if alpha is None else float(alpha))
    return resolve_threat(defaults, "eval")


def _shard(text: str | None) -> Shard | None:
    if text is None:
        return None
    count = text.partition("/")[2]
    return Shard(None, int(count)) if text.startswith("merge/") and count.isdigit() else Shard.parse(text)


def evaluate(
    model: torch.nn.Module,
    x: Any,
    y: Any,
    *,
    eps: float | None = None,
    norm: str = "linf",
    attacks: Iterable[Any] | None = None,
    version: str | None = None,
    classes: Sequence[str] | int | None = None,
    out: str | Path | None = None,
    steps: int | None = None,
    alpha: float | None = None,
    n_per_class: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    seed: int = 0,
    autoattack_scope: str = "survivors",
    amp: str = "off",
    plot: bool = False,
    quiet: bool = False,
    progress_every: float | None = None,
    overwrite: bool = False,
    dataset: str | dict[str, Any] = "tensors",
    train_counts: list[int] | None = None,
    source: dict[str, Any] | None = None,
    shard: str | None = None,
) -> Report:
    """Per-class clean and robust accuracy of ``model`` on ``(x, y)``; a :class:`Report` (see the module docstring).

    ``n_per_class`` evaluates a stratified, deterministic subset; ``seed`` seeds
    the attacks (random starts, AutoAttack); ``autoattack_scope="all"`` runs
    AutoAttack on every point instead of the points the other attacks left robust;
    ``train_counts`` (per-class training counts) adds the long-tailed group means;
    ``source`` is recorded as the model's provenance (``name``, ``architecture``,
    ``checkpoint``, ``additional_data``...).

    ``shard="K/N"`` (with ``out``) evaluates shard K of N only (one process, GPU or
    machine each, e.g. ``shard=f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}"``
    under ``torchrun``); the last shard to finish merges all into the result of the
    whole evaluation, equal to one process's, and the others raise
    :class:`~rfbench.benchmark.eval.shard.ShardsIncomplete`.  ``shard="merge/N"``
    merges N finished shards (:mod:`rfbench.benchmark.eval.shard`).
    """
    xs, ys = _as_tensor(x, "x"), _as_tensor(y, "y")
    specs = list(attacks) if attacks is not None else []
    if version is not None:
        specs.append(f"autoattack:version={version}")
    if not specs and version is None and attacks is not None:
        raise ConfigError("attacks=[] names no attack; leave it out for the default suite (fgsm, pgd, cw)")
    cfg_kw: dict[str, Any] = dict(attacks=specs, n_per_class=n_per_class, batch_size=batch_size, device=device, seed=seed,
                                  autoattack_scope=autoattack_scope, amp=amp, plot=plot and out is not None,
                                  quiet=quiet, overwrite=overwrite)
    if progress_every is not None:
        cfg_kw["progress_every"] = progress_every
    from rfbench.core.config import from_dict

    cfg = from_dict(EvalConfig, cfg_kw)
    threat = _threat(eps, norm, steps, alpha)
    cfg = dataclasses.replace(cfg, eps=threat.eps, norm=threat.norm)
    from rfbench.benchmark.train.runtime import resolve_device

    names = _class_names(classes, model, xs, resolve_device(device))
    data = EvalData(xs, ys, names)
    src = {"kind": "python", "name": type(model).__name__, "architecture": type(model).__name__, **(source or {})}
    result = evaluate_data(model, data, threat, cfg, out, dataset=dataset, train_counts=train_counts, source=src,
                           shard=_shard(shard))
    return Report(result, Path(out) if out is not None else None)


def collect_loader(loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of a loader (batches as ``(x, y, ...)`` tuples or ``{"image"/"x", "label"/"y"}`` mappings), on the CPU."""
    xs, ys = [], []
    for batch in loader:
        if isinstance(batch, dict):
            bx = next((batch[k] for k in ("image", "x", "img", "pixel_values") if k in batch), None)
            by = next((batch[k] for k in ("label", "y", "target", "labels") if k in batch), None)
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
            bx, by = batch[0], batch[1]
        else:
            bx = by = None
        if bx is None or by is None:
            raise RfbenchError("each batch of the loader must be (images, labels, ...) or a mapping with 'image' and 'label'")
        xs.append(_as_tensor(bx, "images"))
        ys.append(_as_tensor(by, "labels").reshape(-1))
    if not xs:
        raise RfbenchError("the loader yielded no batch")
    return torch.cat(xs), torch.cat(ys)


def evaluate_loader(model: torch.nn.Module, loader: Iterable[Any], **kwargs: Any) -> Report:
    """:func:`evaluate` on every ``(x, y)`` of ``loader`` (e.g. a ``torch.utils.data.DataLoader`` without shuffling).

    The loader's images are gathered in memory first (uint8 stays uint8); its
    transforms must yield [0,1] tensors, not normalised ones.  For a resumable
    run (``out=``) the loader must yield the same samples in the same order.
    """
    x, y = collect_loader(loader)
    return evaluate(model, x, y, **kwargs)
