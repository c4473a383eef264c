"""The evaluation harness end to end on a tiny real Fashion-MNIST subset: result, resume, ball check, CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import rfbench.benchmark.data as benchmark_data
from rfbench.attacks.named import PGD
from rfbench.benchmark.cli import main
from rfbench.benchmark.eval import AttackBallError, EvalConfig, SampleFlags, evaluate, validate_result, verify_in_ball
from rfbench.core import perclass as P
from rfbench.core.errors import RfbenchError

ATTACKS = ["fgsm", "pgd:steps=3", "autoattack:version=custom,attacks=apgd-ce,steps=2,restarts=1"]


def _cfg(**kw):
    base = dict(attacks=ATTACKS, eps=0.05, n_per_class=3, batch_size=8, device="cpu", quiet=True)
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full_run(fmnist, fmnist_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, evaluate(fmnist_cnn, fmnist, _cfg(plot=True), out)


def test_result_json_validates_and_is_consistent(full_run):
    out, result = full_run
    on_disk = json.loads((out / "result.json").read_text())
    validate_result(on_disk)
    assert on_disk["schema"] == "rfbench.result/2"
    assert on_disk["n_per_class"] == [3] * 10 and on_disk["threat"]["eps"] == 0.05
    labels = [a["label"] for a in on_disk["attacks"]]
    assert labels == ["fgsm", "pgd-3", "autoattack-apgd-ce-restarts=1-steps=2"]
    aa = on_disk["attacks"][2]
    assert aa["scope"] == "survivors" and aa["after"] == ["fgsm", "pgd-3"]
    pc = {k: np.array(v) for k, v in on_disk["per_class"].items()}
    for lab in labels:  # a sample counts as robust only if every attack failed
        assert (pc["worst_case"] <= pc[lab] + 1e-12).all()
    rb = on_disk["robustbench"]  # fractions; a custom AutoAttack does not fill RobustBench's autoattack_acc
    assert rb["clean_acc"] == pytest.approx(np.mean(pc["clean"]), abs=1e-12) and rb["autoattack_acc"] is None
    assert rb["eps"] == "0.05" and rb["threat_model"] == "Linf" and "convention" in rb
    # contract with the flag file: every per-class vector is the one definition applied to the per-sample flags
    flags = SampleFlags.load(out / "flags.npz")
    ok = {"clean": flags.clean_correct, **{lab: flags.robust(lab) for lab in labels},
          "worst_case": flags.worst_case(on_disk["worst_case_over"])}
    for name, v in ok.items():
        np.testing.assert_allclose(pc[name], P.per_class_accuracy(v, flags.y, 10), err_msg=name)
        assert not (v & ~flags.clean_correct).any(), name  # per sample: robust ⊆ clean
        assert not (ok["worst_case"] & ~v).any(), name  # worst case ⊆ each attack
        lo, hi = np.array(on_disk["per_class_ci95"][name]).T
        assert (lo <= pc[name] + 1e-12).all() and (pc[name] <= hi + 1e-12).all()
    conf = np.array(on_disk["confusion"]["worst_case"])
    assert conf.sum() == 30 and np.allclose(np.diag(conf) / 3, pc["worst_case"])
    assert on_disk["weight_norm"] is not None and len(on_disk["weight_norm"]["per_class"]) == 10
    assert on_disk["checks"]["overall"] in ("pass", "warn", "fail")
    assert on_disk["checks"]["in_ball"]["verdict"] == "pass"
    assert on_disk["provenance"]["packages"]["pyautoattack"] == "0.2.0"
    csv = (out / "per_class.csv").read_text().splitlines()
    assert len(csv) == 11 and "worst_case" in csv[0]
    for png in ("per_class.png", "confusion_flow.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_recompute_from_the_flag_file(full_run):
    out, result = full_run
    flags = SampleFlags.load(out / result["flags_file"])
    assert flags.done.all() and len(flags.index) == 30
    y = flags.y
    wc = flags.worst_case(result["worst_case_over"])
    assert [float(wc[y == k].mean()) for k in range(10)] == pytest.approx(result["per_class"]["worst_case"])
    assert (flags.ran[:, 0] & flags.ran[:, 1]).all()  # cheap attacks ran everywhere
    survivors = flags.clean_correct & flags.robust("fgsm") & flags.robust("pgd-3")
    np.testing.assert_array_equal(flags.ran[:, 2], survivors)  # AutoAttack only on the points still robust


class _Kill(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(fmnist, fmnist_cnn, full_run, tmp_path):
    full_out, full = full_run

    def die_after_two(batch):
        if batch == 1:
            raise _Kill

    with pytest.raises(_Kill):
        evaluate(fmnist_cnn, fmnist, _cfg(plot=True), tmp_path, callback=die_after_two)
    partial = SampleFlags.load(tmp_path / "flags.npz")
    assert partial.done.sum() == 16 and not (tmp_path / "result.json").exists()
    seen = []
    resumed = evaluate(fmnist_cnn, fmnist, _cfg(plot=True), tmp_path, callback=seen.append)
    assert seen == [2, 3]  # only the unfinished batches ran
    a, b = SampleFlags.load(full_out / "flags.npz"), SampleFlags.load(tmp_path / "flags.npz")
    for key in ("index", "clean_pred", "adv_pred", "ran", "pert"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in ("per_class", "summary", "confusion", "cfps", "checks", "robustbench"):
        assert resumed[key] == full[key], key


def test_a_different_evaluation_in_the_same_dir_is_refused(fmnist, fmnist_cnn, full_run):
    out, _ = full_run
    with pytest.raises(RfbenchError, match="different evaluation"):
        evaluate(fmnist_cnn, fmnist, _cfg(attacks=["fgsm"]), out)


def test_points_outside_the_ball_raise(fmnist, fmnist_cnn, tmp_path, monkeypatch):
    real = PGD.perturb

    def too_far(self, x, y, *, seed=None):
        return (real(self, x, y, seed=seed) + 1.5 * self.cfg.eps * torch.sign(torch.randn_like(x))).clamp(0, 1)

    monkeypatch.setattr(PGD, "perturb", too_far)
    with pytest.raises(AttackBallError, match="left the linf ball"):
        evaluate(fmnist_cnn, fmnist, _cfg(attacks=["pgd:steps=1"]), tmp_path)


def test_verify_in_ball():
    x = torch.full((2, 1, 2, 2), 0.5)
    verify_in_ball(x + 0.1, x, 0.1, "linf", "t")  # on the boundary is inside
    with pytest.raises(AttackBallError, match="outside \\[0,1\\]"):
        verify_in_ball(x + 0.6, x, 1.0, "linf", "t")
    with pytest.raises(AttackBallError, match="non-finite"):
        verify_in_ball(x * float("nan"), x, 0.1, "linf", "t")
    with pytest.raises(AttackBallError, match="l2 ball"):
        verify_in_ball(x + 0.1, x, 0.19, "l2", "t")  # ‖δ‖₂ = 0.2


def test_t_sweep_reports_the_strongest_temperature(fmnist, fmnist_cnn, tmp_path):
    cfg = _cfg(attacks=["pgd:steps=3"], t_sweep=[0.2, 1.0, 5.0])
    r = evaluate(fmnist_cnn, fmnist, cfg, tmp_path)
    ts = r["t_sweep"]
    means = {row["T"]: row["mean"] for row in ts["values"]}
    assert set(means) == {0.2, 1.0, 5.0} and all(row["label"].startswith("temperature-pgd-3-T") for row in ts["values"])
    assert means[ts["strongest_T"]] == min(means.values())
    assert ts["vs_pgd"]["pgd"] == "pgd-3" and len(ts["vs_pgd"]["per_class_delta"]) == 10


def test_cli_eval_and_report(fmnist, fmnist_cnn, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: fmnist)  # no second load of the files
    weights = tmp_path / "w.pt"
    torch.save(fmnist_cnn.state_dict(), weights)
    out = tmp_path / "ev"
    rc = main(["eval", "--model", "smallcnn", "--model-arg", "width=0.25", "--weights", str(weights),
               "--dataset", "fashion-mnist", "--n-per-class", "2", "--attack", "fgsm", "--attack", "pgd:steps=2",
               "--eps", "8/255", "--batch-size", "10", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| class" in printed and "worst_case" in printed and "eps 8/255" in printed
    r = json.loads((out / "result.json").read_text())
    assert r["robustbench"]["eps"] == "8/255" and r["provenance"]["model"]["checkpoint"] == str(weights)
    assert main(["report", str(out / "result.json"), "--diff", "fgsm,pgd-2", "--format", "csv"]) == 0
    assert "pgd-2 - fgsm" in capsys.readouterr().out


def test_cli_errors_are_one_line(fmnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: fmnist)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # robustbench missing
    assert main(["eval", "--model", "robustbench:Carmon2019Unlabeled", "--dataset", "fashion-mnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "github.com/RobustBench/robustbench" in err
    assert main(["eval", "--model", str(tmp_path / "net.py") + ":build", "--dataset", "fashion-mnist"]) == 2
    assert "--allow-code" in capsys.readouterr().err
    assert main(["eval", "--model", "smallcnn", "--weights", "x.pt", "--dataset", "fashion-mnist",
                 "--attack", "pgd:stepz=2"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
