"""The paper behind each built-in defense: title, authors, venue, year and a link.

The leaderboard pages show it beside every entry, the way RobustBench lists a
model's paper.  The venue and year agree with the first line of the defense's
docstring (``rfbench list defenses``); a test holds the two together.  A
defense that is rfbench's own or a plain baseline has no paper here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str  # as cited: "Lee et al.", "Li & Liu"
    venue: str  # "ICLR", "TMLR", "arXiv"
    year: int
    url: str

    @property
    def citation(self) -> str:
        """``Lee et al., ICLR 2024``."""
        return f"{self.authors}, {self.venue} {self.year}"


_MADRY = Paper("Towards Deep Learning Models Resistant to Adversarial Attacks", "Madry et al.", "ICLR", 2018,
               "https://arxiv.org/abs/1706.06083")
_AWP = Paper("Adversarial Weight Perturbation Helps Robust Generalization", "Wu et al.", "NeurIPS", 2020,
             "https://arxiv.org/abs/2004.05884")
_FRL = Paper("To be Robust or to be Fair: Towards Fairness in Adversarial Training", "Xu et al.", "ICML", 2021,
             "https://arxiv.org/abs/2010.06121")
_CFOL = Paper("Revisiting adversarial training for the worst-performing class", "Pethick et al.", "TMLR", 2023,
              "https://arxiv.org/abs/2302.08872")

#: registered defense name -> its paper
PAPERS: dict[str, Paper] = {
    "pgd-at": _MADRY,
    "trades": Paper("Theoretically Principled Trade-off between Robustness and Accuracy", "Zhang et al.", "ICML", 2019,
                    "https://arxiv.org/abs/1901.08573"),
    "mart": Paper("Improving Adversarial Robustness Requires Revisiting Misclassified Examples", "Wang et al.", "ICLR",
                  2020, "https://openreview.net/forum?id=rklOg6EFwS"),
    "awp-at": _AWP,
    "awp-trades": _AWP,
    "cb-at": Paper("Class-Balanced Loss Based on Effective Number of Samples", "Cui et al.", "CVPR", 2019,
                   "https://arxiv.org/abs/1901.05555"),
    "frl-rw": _FRL,
    "frl-rwrm": _FRL,
    "robal": Paper("Adversarial Robustness under Long-Tailed Distribution", "Wu et al.", "CVPR", 2021,
                   "https://arxiv.org/abs/2104.02703"),
    "cfa": Paper("CFA: Class-wise Calibrated Fair Adversarial Training", "Wei et al.", "CVPR", 2023,
                 "https://arxiv.org/abs/2303.14460"),
    "wat": Paper("WAT: Improve the Worst-class Robustness in Adversarial Training", "Li & Liu", "AAAI", 2023,
                 "https://arxiv.org/abs/2302.04025"),
    "cfol": _CFOL,
    "cfol-rw": _CFOL,
    "reat": Paper("Alleviating the Effect of Data Imbalance on Adversarial Training", "Li et al.", "arXiv", 2023,
                  "https://arxiv.org/abs/2307.10205"),
    "dafa": Paper("DAFA: Distance-Aware Fair Adversarial Training", "Lee et al.", "ICLR", 2024,
                  "https://arxiv.org/abs/2401.12532"),
    "at-bsl": Paper("Revisiting Adversarial Training under Long-Tailed Distributions", "Yue et al.", "CVPR", 2024,
                    "https://arxiv.org/abs/2403.10073"),
    "taet": Paper("TAET: Two-Stage Adversarial Equalization Training on Long-Tailed Distributions", "Wang et al.",
                  "CVPR", 2025, "https://arxiv.org/abs/2503.01924"),
    "robustlt": Paper("Taming the Long Tail: Rebalancing Adversarial Training via Adaptive Perturbation", "Zhang et al.",
                      "CVPR", 2026, "https://arxiv.org/abs/2605.13395"),
}


def paper_of(defense: str) -> Paper | None:
    """The paper of a registered defense name, or None (a baseline, rfbench's own, or not built in)."""
    return PAPERS.get(defense)
