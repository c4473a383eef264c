"""Tensor-level evaluation: ``rfbench.evaluate(model, x, y, eps=...)`` and ``rfbench.evaluate_loader``.

The same harness as ``rfbench eval`` (:func:`rfbench.benchmark.eval.harness.evaluate_data`),
called on tensors instead of a registered dataset::

    import rfbench
    report = rfbench.evaluate(model, x_test, y_test, eps=8/255, attacks=["pgd", "cw"])
    report.per_class                 # pandas DataFrame: one row per class, fractions
    report.worst_case                # {'class': 'cat', 'tied': ['cat'], 'accuracy': 0.41, 'ci95': [...], ...}
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

Progress (the attack running, images/s, ETA; see :mod:`rfbench.benchmark.eval.progress`) is logged
through :mod:`logging`.  When the program has configured no logging (the root logger has no
handler, and neither has the ``rfbench`` logger), the call installs, for its own duration, a
handler on the ``rfbench`` logger that writes INFO lines to stderr, so a script run as
``python my_eval.py 2> err`` shows that it is working; ``quiet=True`` silences it.

Returns a :class:`Report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from rfbench.benchmark.eval.api_checks import (
    check_classes,
    check_images,
    check_labels,
    check_model_materialised,
    check_n_per_class,
    check_outputs_materialised,
    check_threat_args,
)
from rfbench.benchmark.eval.harness import EvalConfig, EvalData, evaluate_data
from rfbench.benchmark.eval.render import markdown_table
from rfbench.benchmark.eval.render import per_class_frame as _per_class_frame
from rfbench.benchmark.eval.result import EvalResult
from rfbench.benchmark.eval.shard import Shard
from rfbench.benchmark.eval.summary_line import checks_text
from rfbench.core.errors import ConfigError, RfbenchError
from rfbench.core.io.atomic import atomic_write_text, read_json
from rfbench.core.perclass import worst_classes
from rfbench.core.threat import OTHER_NORM_RATIO, Threat, ThreatDefaults, resolve_threat

DEFAULT_STEPS = 20


@contextlib.contextmanager
def default_logging(quiet: bool) -> Iterator[None]:
    """INFO lines of the ``rfbench`` loggers to stderr while the block runs, unless ``quiet`` or the
    program configured logging itself (a handler on the root or the ``rfbench`` logger)."""
    logger = logging.getLogger("rfbench")
    if quiet or logging.getLogger().handlers or logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET or level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@dataclass
class Report:
    """A view of an evaluation's result (:class:`~rfbench.benchmark.eval.result.EvalResult`) with tables and plots.

    ``result`` is the validated, frozen result (what ``result.json`` holds); ``out`` the
    directory it was written to (None for an in-memory evaluation).  A plain dictionary
    given as ``result`` is validated into one.
    """

    result: EvalResult
    out: Path | None = None

    def __post_init__(self) -> None:
        self.result = EvalResult.from_dict(self.result)

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        """A report from a ``result.json`` (or the directory holding it)."""
        path = Path(path)
        path = path / "result.json" if path.is_dir() else path
        return cls(EvalResult.from_dict(read_json(path)), path.parent)

    # -- tables (fractions) --------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """``clean``, the attack labels in run order, ``worst_case``."""
        return list(self.result["names"])

    @property
    def per_class(self) -> pd.DataFrame:
        """One row per class, indexed by class name (``report.per_class.loc["Shirt"]``); fractions.

        Columns (``docs/evaluation.md``, "Per-class columns"):

        * ``class``: the class name (also the index); ``n``: its number of evaluated images;
        * ``clean``, one column per attack, ``worst_case``: accuracy of the class, clean, under
          that attack, and robust to every attack of the worst case at once (per sample);
        * ``boundary_error``: ``clean - worst_case``, the share of the class's images that are
          classified correctly but not robustly (Zhang et al., ICML 2019, the boundary error of TRADES);
        * ``cfps_worst_case``: class false-positive score under the worst case: of all the images
          misclassified under attack, the share predicted as this class (the columns sum to 1 when
          anything is misclassified; a high value: the class the attacks push images into);
        * ``weight_norm`` (only for a model with a linear head found by rfbench): the L2 norm
          ``||w_k||`` of the class's weight vector in that last layer (Tian et al., "Intriguing
          class-wise properties", 2021: weak classes tend to have small norms).
        """
        df = _per_class_frame(self.result)
        df.index = pd.Index(self.result["classes"])
        return df

    @property
    def summary(self) -> pd.DataFrame:
        """One row per name: mean (balanced), worst, worst class, best, gap, std, nsd, tail20, and the worst
        class's simultaneous 95% interval ``worst_ci95_lo``/``_hi`` (Wilson, Bonferroni-adjusted over the
        classes: it covers the minimum over the classes, so it is wider than that class's own interval in
        :attr:`intervals`).  ``worst_class`` names the first class at the minimum; :attr:`worst_case`
        lists every tied class."""
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
        """Each class's own 95% Wilson interval (not adjusted for the number of classes): columns
        ``(name, "lo")`` and ``(name, "hi")``, one row per class.  The interval of the *worst* class in
        :attr:`summary` and :attr:`worst_case` is the simultaneous (Bonferroni) one, which is wider."""
        cols = {}
        for name in self.names:
            ci = np.asarray(self.result["per_class_ci95"][name], dtype=float)
            cols[(name, "lo")], cols[(name, "hi")] = ci[:, 0], ci[:, 1]
        df = pd.DataFrame(cols, index=pd.Index(self.result["classes"], name="class"))
        df.columns = pd.MultiIndex.from_tuples(df.columns)
        return df

    @property
    def worst_case(self) -> dict[str, Any]:
        """The weakest class under the worst case over the attacks: its name, accuracy, every class tied
        with it (``tied``), and ``ci95``, the simultaneous 95% interval of the minimum over the classes
        (Wilson, Bonferroni-adjusted; :mod:`rfbench.core.perclass`)."""
        s = self.result["summary"]["worst_case"]
        tied = worst_classes(self.result["per_class"]["worst_case"]) or [s["worst_class"]]
        return {"class": self.result["classes"][s["worst_class"]], "class_index": s["worst_class"],
                "tied": [self.result["classes"][k] for k in tied],
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
        return self.result.to_dict()

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The result as JSON text (fractions); written atomically to ``path`` when given."""
        from rfbench.core.io.atomic import _jsonable

        text = json.dumps(_jsonable(self.result.to_dict()), indent=indent, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def to_markdown(self) -> str:
        """The per-class table in percent with summary rows and the worst-case footer (what ``rfbench eval`` prints)."""
        return markdown_table(self.result)

    def plot(self, path: str | Path | None = None, kind: str = "per_class"):
        """``per_class`` bars (clean vs worst case, 95% intervals) or the ``confusion`` flow; the matplotlib figure.

        The figure displays itself as an image as a notebook cell's last expression (it is made
        outside pyplot, so no ``<Figure ...>`` text and no second copy). With ``path`` it is written
        as a PNG and the path returned.
        """
        from rfbench.benchmark.eval import plots

        makers = {"per_class": plots.per_class_figure, "confusion": plots.confusion_flow_figure}
        if kind not in makers:
            raise ConfigError(f"plot kind must be one of {', '.join(makers)}, got {kind!r}")
        fig = makers[kind](self.result)
        return plots.save_figure(fig, path) if path is not None else fig

    def __repr__(self) -> str:
        w = self.worst_case
        worst = (f"worst class {w['class']} {w['accuracy']:.3f}" if len(w["tied"]) == 1
                 else f"{len(w['tied'])} classes tie as the worst at {w['accuracy']:.3f}")
        return (f"Report({self.result.get('dataset')}, {self.result['n_samples']} samples, {len(self.result['classes'])} "
                f"classes, eps {self.result['threat']['eps_str']} {self.result['threat']['norm']}: clean {self.clean_accuracy:.3f}, "
                f"robust {self.robust_accuracy:.3f}, {worst}; {checks_text(self.result['checks'])})")

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
    check_outputs_materialised(out)
    if not torch.is_tensor(out) or out.ndim != 2:
        raise RfbenchError("could not read the number of classes from the model's output; pass classes=[...]")
    return [str(i) for i in range(int(out.shape[1]))]


def _threat(eps: float | None, norm: str, steps: int | None, alpha: float | None) -> Threat:
    if eps is None:
        raise ConfigError("evaluate needs eps= (e.g. eps=8/255 for CIFAR-10 Linf); there is no dataset protocol to take it from")
    norm = norm.lower()
    eps = float(eps)
    defaults = ThreatDefaults(norm=norm, eps=eps, eval_steps=DEFAULT_STEPS if steps is None else int(steps),
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
    check_threat_args(steps, alpha)
    check_images(xs)
    check_model_materialised(model)
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
    check_classes(names)
    check_labels(ys, len(xs), names)
    check_n_per_class(n_per_class, ys.reshape(-1), names)
    data = EvalData(xs, ys, names)
    src = {"kind": "python", "name": type(model).__name__, "architecture": type(model).__name__, **(source or {})}
    with default_logging(quiet):
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
