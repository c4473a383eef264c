"""The one PGD core (Madry et al., ICLR 2018) behind every attack and every defense's inner maximisation.

Pluggable parts: norm (``linf``, ``l2``), loss (:mod:`rfbench.attacks.losses`),
random start (``uniform``, ``normal``, ``none``; clipped to [0,1] or not, and
the radius of a uniform start), restarts, per-sample early stop, per-sample
``eps``/``alpha`` (tensors of shape ``(B,)``) and the batch-norm mode during
the attack (``bn``: see :data:`BN_MODES`).

In float32 with ``loss='ce'`` and a uniform start the iterates are the same
as ``torchattacks.PGD``'s for the same random stream: the same operations in
the same order (mean-reduced loss, sign step, clamp of the perturbation, clamp
to [0,1]).

Only the input gets a gradient: parameters are frozen for the duration of the
attack (``requires_grad_(False)``), which skips the weight-gradient half of
every backward.  The model's mode is the caller's unless ``bn`` names one
(:func:`bn_mode`): ``eval`` (running statistics), ``train`` (batch statistics,
and every attack forward updates the running statistics, as released code that
attacks in train mode does), or ``batch`` (batch statistics without touching the
running statistics: train mode with ``track_running_stats=False``).

Speed (``docs/performance.md``): without early stop the steps run on the
whole batch with no per-step indexing; with early stop the fooled samples
leave the working batch.  A channels-last input keeps that memory format
through the attack (pair it with a channels-last model), and
``autocast_dtype=torch.bfloat16`` runs forward and backward under autocast
(the iterates, the projection and the returned ``x_adv`` stay float32).

Example::

    from rfbench.attacks.core import pgd
    x_adv = pgd(model, x, y, eps=8/255, alpha=2/255, steps=10)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from rfbench.attacks.losses import AttackLoss, make_loss
from rfbench.core.threat import NORMS

STARTS = ("uniform", "normal", "none", "uniform-positive")
BN_MODES = ("eval", "train", "batch")  # batch norm during an attack; see bn_mode


@contextlib.contextmanager
def frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter, restoring it afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (BN uses running statistics), restoring its mode afterwards."""
    with bn_mode(model, "eval"):
        yield


@contextlib.contextmanager
def bn_mode(model: torch.nn.Module, mode: str | None) -> Iterator[None]:
    """Run the block with batch norm in ``mode``, restoring the model's mode (and BN flags) afterwards.

    * ``eval``: ``model.eval()``, BN normalises with its running statistics;
    * ``train``: ``model.train()``, BN normalises with the batch's statistics and
      every forward updates the running statistics;
    * ``batch``: ``model.train()`` with ``track_running_stats=False`` on every BN
      layer: batch statistics, running statistics (and ``num_batches_tracked``) untouched;
    * ``None``: the mode the caller set.
    """
    if mode is None:
        yield
        return
    if mode not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {mode!r}")
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if mode == "batch" else []
    tracked = [m.track_running_stats for m in norms]
    model.train(mode != "eval")
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, t in zip(norms, tracked):
            m.track_running_stats = t
        model.train(was_training)


def _as_col(v: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A scalar stays a scalar; a per-sample tensor becomes ``(B,1,1,1)``."""
    if torch.is_tensor(v):
        return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return float(v)


def _clamp_linf(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(eps):
        return torch.max(torch.min(delta, eps), -eps)
    return torch.clamp(delta, min=-eps, max=eps)


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


def _draw(x: torch.Tensor, generator, fill) -> torch.Tensor:
    """``fill(tensor, generator)`` on a tensor shaped like ``x``.

    ``generator`` is a :class:`torch.Generator`, ``None`` (the global RNG), or
    a noise source with a ``draw(like, fill)`` method that returns the draw for
    ``like`` (the data-parallel trainer's
    :class:`rfbench.benchmark.train.distributed.ShardedGenerator`, which draws
    for the global batch and keeps this rank's rows).
    """
    if hasattr(generator, "draw"):
        return generator.draw(x, fill)
    return fill(torch.empty_like(x), generator)


def _uniform(x: torch.Tensor, low: float, high: float, generator) -> torch.Tensor:
    return _draw(x, generator, lambda t, g: t.uniform_(low, high, generator=g))


def random_start(
    x: torch.Tensor, eps: float | torch.Tensor, norm: str, kind: str, std: float, generator: torch.Generator | None,
    clip: bool = True,
) -> torch.Tensor:
    """The starting point: ``uniform`` in the eps-ball, ``normal`` (x + std·N(0,1)), ``none``, or
    ``uniform-positive`` (x + eps·U[0,1), one-sided, as RoBal's release draws it; L∞ only).

    ``clip`` clamps it to [0,1]; without it the first gradient is taken at the
    unclipped point (as the TRADES-family releases do) and the first step's
    projection brings the iterate back into [0,1].
    """
    if kind == "none":
        return x.clone()
    if kind == "normal":
        start = x + std * _draw(x, generator, lambda t, g: t.normal_(generator=g))
    elif kind == "uniform-positive":
        start = x + _uniform(x, 0.0, 1.0, generator) * eps
    elif norm == "linf":
        # scalar eps: uniform_(-eps, eps) exactly as torchattacks.PGD draws it
        noise = _uniform(x, -1.0, 1.0, generator) * eps if torch.is_tensor(eps) else _uniform(x, -eps, eps, generator)
        start = x + noise
    else:
        d = _draw(x, generator, lambda t, g: t.normal_(generator=g))
        n = _l2_norm(d)
        r = _draw(n, generator, lambda t, g: t.uniform_(0, 1, generator=g))
        start = x + d * (r / n * eps)
    return start.clamp(0, 1) if clip else start


def _step(
    x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, eps: float | torch.Tensor, alpha: float | torch.Tensor, norm: str
) -> torch.Tensor:
    """One ascent step followed by the projection onto the eps-ball and [0,1]."""
    if norm == "linf":
        x_adv = x_adv.detach() + alpha * grad.sign()
        delta = _clamp_linf(x_adv - x, eps)
        return torch.clamp(x + delta, 0, 1).detach()
    g = grad / (_l2_norm(grad) + 1e-10)
    x_adv = x_adv.detach() + alpha * g
    delta = x_adv - x
    factor = eps / _l2_norm(delta)
    factor = torch.min(factor, torch.ones_like(factor))
    return torch.clamp(x + delta * factor, 0, 1).detach()


def _loss_aux(per_sample: dict[str, torch.Tensor], shared: dict[str, torch.Tensor],
              idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The loss's ``aux``: ``shared`` entries as given, ``per_sample`` entries restricted to rows ``idx`` (None = all)."""
    rows = per_sample if idx is None else {k: v[idx] for k, v in per_sample.items()}
    return {**shared, **rows}


def _sel(v: float | torch.Tensor, idx: torch.Tensor) -> float | torch.Tensor:
    return v[idx] if torch.is_tensor(v) else v


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 when it is float64 (a float64 model keeps its precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _input_grad(
    model: torch.nn.Module, loss_fn: AttackLoss, xa: torch.Tensor, y: torch.Tensor, aux: dict[str, torch.Tensor],
    autocast_dtype: torch.dtype | None, return_logits: bool = False,
):
    """Gradient of the batch-mean loss with respect to the input only (the caller froze the parameters)."""
    with torch.autocast(xa.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(xa)
        l = loss_fn(_at_least_float32(logits), y, aux).mean()
    grad, = torch.autograd.grad(l, [xa])
    return (grad, logits.detach()) if return_logits else grad


def _early_stop_steps(
    model: torch.nn.Module, loss_fn: AttackLoss, xs: torch.Tensor, ys: torch.Tensor, x_adv: torch.Tensor,
    e: float | torch.Tensor, a: float | torch.Tensor, aux: dict[str, torch.Tensor], shared_aux: dict[str, torch.Tensor],
    todo: torch.Tensor, steps: int, norm: str, autocast_dtype: torch.dtype | None, layout: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD steps that freeze each sample at its first misclassified iterate and drop it from the batch.

    ``xs``/``ys`` are the samples of this restart (rows ``todo`` of the caller's
    batch; ``aux`` is per-sample over that batch, ``shared_aux`` is not sliced).  Returns the iterates and which samples were seen misclassified.
    """
    active = torch.arange(len(xs), device=xs.device)
    broken = torch.zeros(len(xs), dtype=torch.bool, device=xs.device)
    for _ in range(steps):
        xa = x_adv[active].contiguous(memory_format=layout).requires_grad_(True)
        grad, logits = _input_grad(model, loss_fn, xa, ys[active], _loss_aux(aux, shared_aux, todo[active]),
                                   autocast_dtype, return_logits=True)
        keep = logits.argmax(1) == ys[active]
        broken[active[~keep]] = True
        active, grad, xa = active[keep], grad[keep], xa[keep]
        if active.numel() == 0:
            break
        x_adv[active] = _step(xs[active], xa, grad, _sel(e, active), _sel(a, active), norm)
    return x_adv, broken


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    norm: str = "linf",
    loss: str | AttackLoss = "ce",
    loss_kwargs: dict | None = None,
    start: str = "uniform",
    start_std: float = 0.001,
    start_clip: bool = True,
    start_eps: float | torch.Tensor | None = None,
    bn: str | None = None,
    restarts: int = 1,
    early_stop: bool = False,
    aux: dict[str, torch.Tensor] | None = None,
    shared_aux: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss`` inside the ``norm`` ball of radius ``eps`` around ``x``.

    Arguments:
        model: maps inputs in [0,1] to logits; its mode is left as the caller set it unless ``bn`` is given.
        x, y: inputs in [0,1] ``(B,...)`` and labels ``(B,)``.
        eps, alpha: radius and step size, scalars or per-sample tensors ``(B,)``.
        steps: number of ascent steps (FGSM is one step with ``alpha = eps`` and no start).
        norm: ``linf`` (sign steps) or ``l2`` (normalised-gradient steps).
        loss: a name from :data:`attacks.losses.LOSSES` or a callable; ``loss_kwargs`` configure it.
        start: ``uniform`` (in the ball), ``normal`` (``x + start_std·N(0,1)``), ``none`` or
            ``uniform-positive`` (``x + eps·U[0,1)``).
        start_clip: clamp the random start to [0,1] (``False``: the first gradient is taken at
            the unclipped start, as the TRADES-family releases do).
        start_eps: radius of a ``uniform`` start (default ``eps``; e.g. a base radius when
            ``eps`` is per-class, as RobustLT's release draws it); the steps still project onto ``eps``.
        bn: batch norm during the attack, one of :data:`BN_MODES` (:func:`bn_mode`), or
            ``None`` to keep the caller's mode.
        restarts: independent runs; a sample counts as broken if any run breaks it.
        early_stop: freeze each sample at its first misclassified iterate (evaluation only:
            the "robust or not" answer is unchanged, and it is faster).
        aux: per-sample tensors for the loss, first dimension ``B`` (sliced
            along with the active samples), e.g. clean probabilities or targets.
        shared_aux: tensors for the loss that are the same for every sample
            (per-class weights, a temperature table); passed unsliced.  A name
            may not be in both.
        generator: source of the random start (defaults to the global RNG), or
            a noise source with ``draw(like, fill)`` (data-parallel training).
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward/backward under autocast.

    Returns:
        ``x_adv`` with ``‖x_adv − x‖ ≤ eps`` and ``x_adv ∈ [0,1]``.

    Shape:
        ``x_adv`` has the shape, dtype and device of ``x``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if start == "uniform-positive" and norm != "linf":
        raise ValueError("start 'uniform-positive' is an Linf start")
    if bn is not None and bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    loss_fn = make_loss(loss, **(loss_kwargs or {}))
    aux, shared_aux = aux or {}, shared_aux or {}
    x = x.detach()
    b = x.shape[0]
    for k, v in aux.items():
        if not (torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == b):
            raise ValueError(f"aux[{k!r}] must be a per-sample tensor with first dimension {b} "
                             "(pass shared tensors as shared_aux)")
    if both := sorted(set(aux) & set(shared_aux)):
        raise ValueError(f"{both} given both as per-sample aux and as shared_aux")
    eps_c, alpha_c = _as_col(eps, x), _as_col(alpha, x)
    start_c = eps_c if start_eps is None else _as_col(start_eps, x)
    device_type = x.device.type
    best = x.clone()
    todo = torch.arange(b, device=x.device)  # samples not yet broken (across restarts)
    layout = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    with frozen_params(model), bn_mode(model, bn):
        restarts = max(1, restarts)
        for restart in range(restarts):
            if todo.numel() == 0:
                break
            whole = todo.numel() == b  # no gather needed while every sample is still in play
            xs, ys = (x, y) if whole else (x[todo].contiguous(memory_format=layout), y[todo])
            e, a = (eps_c, alpha_c) if whole else (_sel(eps_c, todo), _sel(alpha_c, todo))
            r = start_c if whole else _sel(start_c, todo)
            x_adv = random_start(xs, r, norm, start, start_std, generator, clip=start_clip)
            if early_stop:
                x_adv, broken = _early_stop_steps(model, loss_fn, xs, ys, x_adv, e, a, aux, shared_aux, todo, steps,
                                                  norm, autocast_dtype, layout)
            else:  # the torchattacks order of operations, without any per-step indexing
                sub_aux = _loss_aux(aux, shared_aux, None if whole else todo)
                for _ in range(steps):
                    xa = x_adv.requires_grad_(True)
                    grad = _input_grad(model, loss_fn, xa, ys, sub_aux, autocast_dtype)
                    x_adv = _step(xs, xa, grad, e, a, norm)
                broken = torch.zeros(len(xs), dtype=torch.bool, device=x.device)
            best[todo] = x_adv
            if restart == restarts - 1:
                break
            with torch.no_grad(), torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                broken |= model(x_adv).argmax(1) != ys
            todo = todo[~broken]
    return best
