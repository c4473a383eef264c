"""The per-sample flag file (``flags.npz``): every table of a result can be recomputed from it.

Arrays (N evaluated samples, A attacks in run order):

* ``index`` (N,): each sample's position in the original test set;
* ``y`` (N,): its label; ``clean_pred`` (N,): the clean prediction (−1 until its batch is done);
* ``adv_pred`` (N, A): the prediction on each attack's adversarial input (−1 where the attack did not run);
* ``ran`` (N, A): whether the attack ran on the sample (a cascade attack skips points already broken);
* ``success`` (N, A): ``ran`` and ``adv_pred ≠ y``;
* ``pert`` (N, A): the perturbation's norm (in the attack's norm), NaN where it did not run;
* ``done`` (N,): the sample's batch is finished (resume starts at the first unfinished batch);
* ``labels`` (A,): the attack labels; ``meta``: JSON text identifying the evaluation.

The file is rewritten atomically after every batch, so a killed evaluation
resumes from the last finished batch and gives exactly the result of an
uninterrupted one (attack randomness is seeded per batch).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rfbench.core.errors import RfbenchError
from rfbench.core.io.atomic import atomic_write_bytes
from rfbench.core.perclass import robust


@dataclass
class SampleFlags:
    index: np.ndarray
    y: np.ndarray
    labels: list[str]
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    ran: np.ndarray
    pert: np.ndarray
    done: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def empty(cls, index: np.ndarray, y: np.ndarray, labels: list[str], meta: dict[str, Any]) -> "SampleFlags":
        n, a = len(y), len(labels)
        return cls(
            index=np.asarray(index, dtype=np.int64),
            y=np.asarray(y, dtype=np.int64),
            labels=list(labels),
            clean_pred=np.full(n, -1, dtype=np.int64),
            adv_pred=np.full((n, a), -1, dtype=np.int64),
            ran=np.zeros((n, a), dtype=bool),
            pert=np.full((n, a), np.nan, dtype=np.float32),
            done=np.zeros(n, dtype=bool),
            meta=dict(meta),
        )

    # -- derived ---------------------------------------------------------------
    @property
    def success(self) -> np.ndarray:
        """(N, A): the attack ran and changed the prediction away from the label."""
        return self.ran & (self.adv_pred != self.y[:, None])

    @property
    def clean_correct(self) -> np.ndarray:
        return self.clean_pred == self.y

    def robust(self, label: str) -> np.ndarray:
        """(N,): robust to the attack: clean-correct AND the attack ran AND its adversarial prediction is
        correct (:func:`rfbench.core.perclass.robust`), so robust ⊆ clean-correct."""
        a = self.labels.index(label)
        return robust(self.clean_correct, self.ran[:, a] & (self.adv_pred[:, a] == self.y))

    def worst_case(self, labels: list[str]) -> np.ndarray:
        """(N,): robust to every attack among ``labels`` (clean-correct alone when there is none)."""
        ok = self.clean_correct.copy()
        for lab in labels:
            ok &= self.robust(lab)
        return ok

    def worst_case_pred(self, labels: list[str]) -> np.ndarray:
        """(N,): the clean prediction if wrong, else the first successful attack's prediction, else the label."""
        pred = self.y.copy()
        open_ = self.clean_correct.copy()
        pred[~open_] = self.clean_pred[~open_]
        for lab in labels:
            a = self.labels.index(lab)
            hit = open_ & self.success[:, a]
            pred[hit] = self.adv_pred[hit, a]
            open_ &= ~hit
        return pred

    # -- I/O -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the file atomically (a reader never sees half a file)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf, index=self.index, y=self.y, labels=np.array(self.labels, dtype=str), clean_pred=self.clean_pred,
            adv_pred=self.adv_pred, ran=self.ran, success=self.success, pert=self.pert, done=self.done,
            meta=np.array(json.dumps(self.meta, sort_keys=True)),
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "SampleFlags":
        """Read a flag file (no pickled objects); a corrupt file is a one-line error."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    index=z["index"], y=z["y"], labels=[str(s) for s in z["labels"]], clean_pred=z["clean_pred"],
                    adv_pred=z["adv_pred"], ran=z["ran"], pert=z["pert"], done=z["done"], meta=json.loads(str(z["meta"])),
                )
        except FileNotFoundError:
            raise RfbenchError(f"flag file not found: {path}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise RfbenchError(f"corrupt flag file {path}: {exc}") from None
