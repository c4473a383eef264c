"""Per-epoch statistics of a training run: the training adversarial examples per class, and the checkpoint score."""

from __future__ import annotations

from typing import Any

import torch

from rfbench.core.perclass import accuracy_from_counts, class_counts, nan_mean, nan_min


def selection_score(val_robust: list[float], rule: str) -> float:
    """Checkpoint-selection metric on per-class validation robust accuracy."""
    mean, worst = nan_mean(val_robust), nan_min(val_robust)  # a class without validation images (NaN) is left out
    return {"mean": mean, "worst": worst, "mean+worst": mean + worst}[rule]


class EpochAccumulator:
    """Per-class statistics of the training adversarial examples over one epoch.

    The training step makes no clean pass, so ``robust_acc`` here is the accuracy on the
    training adversarial examples (CFA's t_k, Wei et al., CVPR 2023), not the
    clean-and-adversarial robust accuracy that validation and evaluation report.
    """

    def __init__(self, num_classes: int, device: torch.device):
        c = num_classes
        self.pred_counts = torch.zeros(c, dtype=torch.long, device=device)
        self.correct = torch.zeros(c, dtype=torch.long, device=device)
        self.seen = torch.zeros(c, dtype=torch.long, device=device)
        self.prob_sum = torch.zeros(c, c, dtype=torch.float64, device=device)
        self.loss_sum = 0.0
        self.terms: dict[str, float] = {}
        self.batches = 0

    @torch.no_grad()
    def add(self, y: torch.Tensor, logits: torch.Tensor | None, loss: float, terms: dict[str, float]) -> None:
        self.batches += 1
        self.loss_sum += loss
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v)
        c = self.seen.numel()
        self.seen += class_counts(y, c)
        if logits is None:
            return
        logits = logits.detach().float()
        pred = logits.argmax(1)
        self.pred_counts += class_counts(pred, c)
        self.correct += class_counts(y, c, pred == y)
        self.prob_sum.index_add_(0, y, logits.softmax(1).double())  # per-class sums of the probability vectors

    def state_dict(self) -> dict[str, Any]:
        return {"pred_counts": self.pred_counts, "correct": self.correct, "seen": self.seen,
                "prob_sum": self.prob_sum, "loss_sum": self.loss_sum, "terms": dict(self.terms),
                "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("pred_counts", "correct", "seen", "prob_sum"):
            getattr(self, k).copy_(state[k])
        self.loss_sum, self.terms, self.batches = float(state["loss_sum"]), dict(state["terms"]), int(state["batches"])

    def summary(self) -> dict[str, Any]:
        """Per class: predictions, accuracy on the training adversarial examples and mean probabilities;
        a class not seen this epoch is NaN (:mod:`rfbench.core.perclass`)."""
        return {
            "pred_counts": self.pred_counts.tolist(),
            "robust_acc": accuracy_from_counts(self.correct, self.seen).tolist(),
            "adv_probs": accuracy_from_counts(self.prob_sum, self.seen[:, None]).tolist(),
            "loss": self.loss_sum / max(1, self.batches),
            "terms": {k: v / max(1, self.batches) for k, v in self.terms.items()},
        }
