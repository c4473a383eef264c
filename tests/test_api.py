"""The public API (``import rfbench``), tensor-level evaluation, progress, honest result files, ``rfbench report``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rfbench
import rfbench.benchmark.data as benchmark_data
from rfbench.benchmark.cli import main
from rfbench.benchmark.data import load_dataset
from rfbench.benchmark.data.subsets import per_class_subset
from rfbench.benchmark.eval.api import Report, collect_loader
from rfbench.core.errors import RfbenchError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["fgsm", "pgd:steps=2"]
KW = dict(eps=0.05, device="cpu", quiet=True, batch_size=10)


@pytest.fixture(scope="module")
def small(fmnist):
    """20 real test images (2 per class) as uint8 tensors, and the class names."""
    ds = per_class_subset(fmnist.test, 2, seed=1)
    return ds.x, ds.y, fmnist.classes


# -- 1. the public API, and running next to a research repository's own modules ----------------------
def test_public_api_names():
    for name in ("attacks", "defenses", "datasets", "models", "leaderboards", "evaluate", "evaluate_loader", "Report",
                 "Threat", "EvalConfig", "load_dataset", "create_model"):
        assert name in dir(rfbench) and getattr(rfbench, name) is not None
    assert rfbench.evaluate is rfbench.benchmark.eval.api.evaluate
    with pytest.raises(AttributeError):
        rfbench.no_such_thing  # noqa: B018


def test_library_and_cli_work_beside_a_repo_with_its_own_attacks_benchmark_defenses(tmp_path):
    """A research repository's ``attacks.py``, ``benchmark/`` and ``defenses.py`` shadow nothing of rfbench."""
    (tmp_path / "attacks.py").write_text("raise ImportError('the user repository attacks.py was imported')\n")
    (tmp_path / "defenses.py").write_text("raise ImportError('the user repository defenses.py was imported')\n")
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "__init__.py").write_text("raise ImportError('the user repository benchmark/ was imported')\n")
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    code = (
        "import sys, torch, rfbench\n"
        "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))\n"
        "x = torch.rand(6, 1, 4, 4); y = torch.tensor([0, 1, 2, 0, 1, 2])\n"
        "r = rfbench.evaluate(m, x, y, eps=0.1, attacks=['pgd:steps=2'], device='cpu', quiet=True)\n"
        "assert r.result['n_samples'] == 6\n"
        "import rfbench.attacks, rfbench.defenses, rfbench.benchmark\n"
        "assert 'site-packages' in rfbench.attacks.__file__ or %r in rfbench.attacks.__file__\n"
        "print('ok')\n") % str(ROOT)
    lib = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert lib.returncode == 0 and "ok" in lib.stdout, lib.stderr[-2000:]
    cli = subprocess.run([sys.executable, "-m", "rfbench", "list", "attacks"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "autoattack" in cli.stdout, cli.stderr[-2000:]
    # the probe files really are importable from there (the test is not vacuous)
    probe = subprocess.run([sys.executable, "-c", "import attacks"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "user repository attacks.py" in probe.stderr


# -- 2. tensor-level evaluation -------------------------------------------------------------------
def test_evaluate_tensors_uint8_equals_float_and_returns_a_report(fmnist_cnn, small, tmp_path):
    x, y, classes = small
    r8 = rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, **KW)
    rf = rfbench.evaluate(fmnist_cnn, x.float() / 255, y, attacks=FAST, classes=classes, **KW)
    assert isinstance(r8, Report) and r8.out is None
    assert r8.result["per_class"] == rf.result["per_class"]  # uint8 is scaled to [0,1] exactly as x/255
    pc = r8.per_class
    assert list(pc["class"]) == classes and list(pc["n"]) == [2] * 10
    for col in ("clean", "fgsm", "pgd-2", "worst_case"):
        assert ((pc[col] >= 0) & (pc[col] <= 1)).all()
    # independent reference: clean accuracy per class by hand
    with torch.no_grad():
        pred = fmnist_cnn(x.float() / 255).argmax(1)
    by_hand = [float((pred[y == k] == k).float().mean()) for k in range(10)]
    assert np.allclose(pc["clean"], by_hand)
    assert (pc["worst_case"] <= np.minimum(pc["fgsm"], pc["pgd-2"]) + 1e-12).all()
    assert r8.summary.loc["worst_case", "worst"] == pytest.approx(pc["worst_case"].min())
    w = r8.worst_case
    assert w["accuracy"] == pytest.approx(pc["worst_case"].min()) and w["class"] in classes
    ci = r8.intervals
    assert ((ci[("clean", "lo")] <= pc["clean"].values + 1e-12) & (pc["clean"].values <= ci[("clean", "hi")] + 1e-12)).all()
    assert json.loads(r8.to_json())["per_class"] == r8.result["per_class"]
    md = r8.to_markdown()
    assert "worst_case" in md and "eps 0.05" in md
    fig = r8.plot()
    assert fig.axes and fig.axes[0].get_ylabel() == "accuracy (%)"
    assert r8.plot(tmp_path / "p.png").exists()
    assert not any(tmp_path.glob("*.json")) and not Path("flags.npz").exists()  # no out=: nothing written


def test_evaluate_writes_only_with_out_and_resumes(fmnist_cnn, small, tmp_path):
    x, y, classes = small
    ref = rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, out=tmp_path / "ref", **KW)
    assert (tmp_path / "ref" / "result.json").exists() and (tmp_path / "ref" / "flags.npz").exists()
    assert Report.load(tmp_path / "ref").result["per_class"] == ref.result["per_class"]

    class Kill(Exception):
        pass

    def kill(b):
        if b == 0:
            raise Kill

    from rfbench.benchmark.eval import api

    orig = api.evaluate_data
    with pytest.raises(Kill):
        api.evaluate_data = lambda *a, **k: orig(*a, **{**k, "callback": kill})
        try:
            rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, out=tmp_path / "run", **KW)
        finally:
            api.evaluate_data = orig
    assert (tmp_path / "run" / "flags.npz").exists() and not (tmp_path / "run" / "result.json").exists()
    resumed = rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, out=tmp_path / "run", **KW)
    assert resumed.result["per_class"] == ref.result["per_class"]
    with pytest.raises(RfbenchError, match="different evaluation"):  # other images, same directory
        rfbench.evaluate(fmnist_cnn, x.flip(0), y.flip(0), attacks=FAST, classes=classes, out=tmp_path / "run", **KW)


def test_evaluate_loader_equals_evaluate(fmnist_cnn, small):
    x, y, classes = small
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.float() / 255, y), batch_size=7)
    xs, ys = collect_loader(loader)
    assert xs.shape == (20, 1, 28, 28) and torch.equal(ys, y)
    a = rfbench.evaluate_loader(fmnist_cnn, loader, attacks=FAST, classes=classes, **KW)
    b = rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, **KW)
    assert a.result["per_class"] == b.result["per_class"]
    dict_loader = [{"image": x[:10], "label": y[:10]}, {"image": x[10:], "label": y[10:]}]
    assert rfbench.evaluate_loader(fmnist_cnn, dict_loader, attacks=FAST, classes=classes, **KW).result["per_class"] == b.result["per_class"]


def test_evaluate_input_errors_are_rfbench_errors(fmnist_cnn, small):
    x, y, _ = small
    with pytest.raises(RfbenchError, match="eps="):
        rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, device="cpu", quiet=True)
    with pytest.raises(RfbenchError, match=r"\[0,1\]"):
        rfbench.evaluate(fmnist_cnn, x.float(), y, attacks=FAST, **KW)  # 0..255 floats
    with pytest.raises(RfbenchError, match="labels"):
        rfbench.evaluate(fmnist_cnn, x, y + 10, attacks=FAST, **KW)


def test_version_standard_is_one_standard_autoattack_spec(fmnist_cnn, small, monkeypatch):
    """``version="standard"`` runs standard AutoAttack alone (its per-class run_standard_evaluation)."""
    from rfbench.benchmark.eval import api

    seen = {}

    class Recorded(Exception):  # the harness is not run: the call stops once its settings are recorded
        pass

    def fake(model, data, threat, cfg, out, **kw):
        seen.update(cfg=cfg, threat=threat)
        raise Recorded

    monkeypatch.setattr(api, "evaluate_data", fake)
    x, y, classes = small
    with pytest.raises(Recorded):
        rfbench.evaluate(fmnist_cnn, x, y, eps=8 / 255, version="standard", device="cpu", quiet=True)
    assert seen["cfg"].attacks == ["autoattack:version=standard"] and seen["threat"].eps == 8 / 255
    with pytest.raises(Recorded):
        rfbench.evaluate(fmnist_cnn, x, y, eps=8 / 255, attacks=["autoattack"], device="cpu", quiet=True)
    assert seen["cfg"].attacks == ["autoattack"]


@pytest.mark.slow
def test_standard_autoattack_per_class_matches_run_standard_evaluation(fmnist, fmnist_cnn):
    """The per-sample outcome of ``version="standard"`` is pyautoattack's own standard evaluation."""
    from pyautoattack import AutoAttack as PackageAA

    from rfbench.benchmark.eval.harness import batch_seed

    ds = per_class_subset(fmnist.test, 1, seed=3)  # 10 images, one per class
    x, y, classes = ds.x, ds.y, fmnist.classes
    eps = 0.03
    r = rfbench.evaluate(fmnist_cnn, x, y, eps=eps, version="standard", classes=classes, device="cpu", quiet=True, batch_size=10)
    xf = x.float() / 255
    aa = PackageAA(fmnist_cnn, norm="Linf", eps=eps, version="standard", device="cpu",
                   seed=batch_seed(0, "autoattack-standard", 0))
    from rfbench.attacks.core import frozen_params

    with torch.random.fork_rng(devices=[]), frozen_params(fmnist_cnn):  # the shared model's weights get no .grad
        _, pred = aa.run_standard_evaluation(xf, y, batch_size=10)
    robust_ref = (pred == y).numpy()
    ref_pc = [float(robust_ref[y.numpy() == k].mean()) for k in range(10)]
    assert r.result["per_class"]["autoattack-standard"] == pytest.approx(ref_pc)
    assert r.result["robustbench"]["autoattack_acc"] == pytest.approx(robust_ref.mean())


# -- 4. progress -------------------------------------------------------------------------------------
def test_progress_lines_off_a_tty_name_the_attack_rate_and_eta(fmnist_cnn, small, tmp_path, caplog):
    x, y, classes = small
    seen_dir = []
    from rfbench.benchmark.eval import api

    orig = api.evaluate_data

    def spy(*a, **k):
        def cb(b):
            if b == 0:
                seen_dir.append((tmp_path / "o" / "flags.npz").exists())
            import time

            time.sleep(0.12)  # a slow batch: the timer must speak during it

        return orig(*a, **{**k, "callback": cb})

    api.evaluate_data = spy
    try:
        with caplog.at_level(logging.INFO, logger="rfbench.benchmark.eval.progress"):
            rfbench.evaluate(fmnist_cnn, x, y, attacks=FAST, classes=classes, eps=0.05, device="cpu", batch_size=5,
                             progress_every=0.05, out=tmp_path / "o")
    finally:
        api.evaluate_data = orig
    assert seen_dir == [True]  # flags.npz exists once the first batch is finished
    lines = [r.getMessage() for r in caplog.records if r.name == "rfbench.benchmark.eval.progress"]
    assert len(lines) >= 2, lines
    periodic = [ln for ln in lines if "img/s" in ln and "ETA" in ln and "/20 images" in ln]
    assert periodic and any("attack pgd-2" in ln or "attack fgsm" in ln for ln in periodic), lines
    assert "finished" in lines[-1] and "20/20 images" in lines[-1] and "img/s" in lines[-1]


def test_progress_eta_and_rate_by_hand():
    from rfbench.benchmark.eval.progress import EvalProgress, format_duration

    p = EvalProgress(100, 20, ["pgd-20"], quiet=True)
    p.t0 -= 10.0  # 10 s ago
    p.images_done(30)  # 30 images in this process in 10 s
    assert p.rate() == pytest.approx(3.0, rel=0.01) and p.eta() == pytest.approx(50 / 3.0, rel=0.01)
    assert format_duration(3725) == "1h02m05s" and format_duration(65) == "1m05s" and format_duration(None) == "?"
    p.close()


def test_autoattack_output_never_reaches_the_terminal(fmnist_cnn, small, capfd):
    from rfbench.attacks import AutoAttack

    x, y, _ = small
    atk = AutoAttack(fmnist_cnn, eps=0.05, version="custom", attacks=["apgd-ce"], steps=2)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # as the CLI's basicConfig: INFO records reach the terminal
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        AutoAttack(fmnist_cnn, eps=8 / 255, version="standard").settings()  # logs "setting parameters for standard version"
        atk(x.float() / 255, y, seed=0)  # prints its progress lines when verbose
        logging.getLogger("rfbench.probe").info("probe line")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    out, err = capfd.readouterr()
    assert "probe line" in err  # the handler does print INFO records: the check below is not vacuous
    assert out == "" and "setting parameters" not in err and "pyautoattack" not in err


def test_eval_reads_only_the_test_split(fmnist, fmnist_cnn, tmp_path, monkeypatch):
    b = load_dataset("fashion-mnist", test_only=True)
    assert b.eval_only and len(b.train) == 0 and len(b.test) == 10000 and b.classes == fmnist.classes
    assert b.mean == fmnist.mean  # Fashion-MNIST's normalisation is a constant, the same either way
    calls = []
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: calls.append(k) or fmnist)
    w = tmp_path / "w.pt"
    torch.save(fmnist_cnn.state_dict(), w)
    assert main(["eval", "--model", "smallcnn", "--model-arg", "width=0.25", "--weights", str(w), "--dataset",
                 "fashion-mnist", "--n-per-class", "1", "--attack", "fgsm", "--out", str(tmp_path / "e"), "--quiet"]) == 0
    assert calls and calls[0].get("test_only") is True


def _image_folder(root: Path, n: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_imagefolder_test_only_never_decodes_training_images(tmp_path, monkeypatch):
    from rfbench.benchmark.data import imagefolder as IF

    root = _image_folder(tmp_path / "my-images")
    decoded = []
    real = IF.decode_images
    monkeypatch.setattr(IF, "decode_images", lambda paths, *a, **k: decoded.extend(paths) or real(paths, *a, **k))
    b = load_dataset(f"imagefolder:{root}", test_only=True)
    assert b.eval_only and len(b.test) == 4 and decoded and all("/test/" in str(p) for p in decoded)
    assert any("measured on the test images" in n for n in b.notes)


# -- 6. honest result files ------------------------------------------------------------------------
class _FcNet(torch.nn.Module):
    """A user's model whose last layer is called ``fc`` (not rfbench's ``head``)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 16), torch.nn.ReLU())
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.body(x))


class _OneClass(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        out = self.lin(x.flatten(1)) * 0
        out[:, 3] = 1.0
        return out


def test_single_class_and_chance_models_fail_the_checks(small):
    x, y, classes = small
    r = rfbench.evaluate(_OneClass(), x, y, attacks=["fgsm"], classes=classes, **KW)
    p = r.checks["predictions"]
    assert p["verdict"] == "fail" and "predicts class 3 for every sample" in p["problems"][0]
    assert r.checks["overall"] == "fail" and "checks: fail" in r.to_markdown()
    from rfbench.benchmark.eval.checks import check_predictions

    yy = np.repeat(np.arange(10), 100)
    good = check_predictions(yy.copy(), yy, 10)
    assert good["verdict"] == "pass"
    rng = np.random.default_rng(0)
    chance = check_predictions(rng.integers(0, 10, 1000), yy, 10)  # random guessing: accuracy ~ 0.1
    assert chance["verdict"] == "fail" and "chance" in chance["problems"][-1]


def test_weight_norms_of_any_final_linear_layer(small):
    x, y, classes = small
    torch.manual_seed(0)
    m = _FcNet()
    r = rfbench.evaluate(m, x, y, attacks=["fgsm"], classes=classes, **KW)
    assert r.result["weight_norm"]["per_class"] == pytest.approx(m.fc.weight.norm(dim=1).tolist(), rel=1e-6)


def test_portable_names_code_hash_and_additional_data(fmnist, tmp_path, monkeypatch):
    from rfbench.benchmark.eval.provenance import dataset_description, portable_source

    d = dataset_description(f"imagefolder:{tmp_path}/data/cifar10-jpeg")
    assert d["name"] == "imagefolder:cifar10-jpeg" and str(tmp_path) not in json.dumps(d)
    assert dataset_description("cifar10")["name"] == "cifar10"
    nets = tmp_path / "nets.py"
    nets.write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self, num_classes):\n"
                    "        super().__init__(); self.l = torch.nn.Linear(784, num_classes)\n"
                    "    def forward(self, x):\n        return self.l(x.flatten(1))\n"
                    "def build(num_classes):\n    return Net(num_classes)\n")
    monkeypatch.setattr(benchmark_data, "load_dataset", lambda *a, **k: fmnist)
    out = tmp_path / "e"
    assert main(["eval", "--model", f"{nets}:build", "--allow-code", "--dataset", "fashion-mnist", "--n-per-class", "1",
                 "--attack", "fgsm", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "result.json").read_text())
    rb = r["robustbench"]
    assert rb["architecture"] == "nets.py:build" and rb["additional_data"] is False
    code_hash = r["provenance"]["model"]["architecture_code_sha256"]
    assert isinstance(code_hash, str) and len(code_hash) == 16
    assert str(tmp_path) not in json.dumps({k: r[k] for k in ("dataset", "robustbench")})
    assert r["samples"]["n"] == 10 and len(r["samples"]["images_sha256"]) == 16
    # the code hash follows the code
    src = portable_source({"architecture": "x"}, torch.nn.Sequential(_FcNet()))
    src2 = portable_source({"architecture": "x"}, torch.nn.Sequential(_OneClass()))
    assert src["architecture_code_sha256"] != src2["architecture_code_sha256"]


def test_reduced_autoattack_records_its_restarts_and_tables_say_cascade(fmnist_cnn, small):
    from rfbench.attacks import AutoAttack

    atk = AutoAttack(fmnist_cnn, eps=0.05, version="custom", attacks=["apgd-ce", "fab"], steps=2)
    built = atk.build("cpu", 0)
    assert built.apgd.n_restarts == 1 and built.fab.n_restarts == 1  # not pyautoattack's custom default of 5
    eff = atk.settings()["effective"]
    assert eff["apgd"]["n_restarts"] == 1 and "standard AutoAttack" in eff["restarts_rule"]
    given = AutoAttack(fmnist_cnn, eps=0.05, version="custom", attacks=["apgd-ce"], restarts=3)
    assert given.build("cpu", 0).apgd.n_restarts == 3 and given.settings()["effective"]["restarts_rule"] == "given (restarts=)"
    x, y, classes = small
    r = rfbench.evaluate(fmnist_cnn, x, y, attacks=["fgsm", "autoattack:version=custom,attacks=apgd-ce,steps=2"],
                         classes=classes, **KW)
    assert "autoattack-apgd-ce-steps=2 (AA on survivors)" in r.to_markdown()
    assert r.result["robustbench"]["autoattack_acc"] is None  # a reduced AA is never RobustBench's number


# -- 7. rfbench report -------------------------------------------------------------------------------
def _result_file(tmp, name, model, x, y, classes, long_name=None):
    r = rfbench.evaluate(model, x, y, attacks=["fgsm"], classes=classes, out=tmp / name, **KW,
                         source={"name": long_name or name})
    return tmp / name / "result.json", r


def test_report_labels_and_diff_refuses_other_samples(fmnist_cnn, small, tmp_path, capsys, caplog):
    x, y, classes = small
    long = "/very/long/absolute/path/to/someone/elses/checkout/models/my_nets.py:build_wide_resnet"
    a, _ = _result_file(tmp_path, "a", fmnist_cnn, x, y, classes, long_name=long)
    b, _ = _result_file(tmp_path, "b", fmnist_cnn, x, y, classes)
    c, _ = _result_file(tmp_path, "c", fmnist_cnn, x[:10], y[:10], classes)
    assert main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert long not in out and "| my_nets.py:build_wide_resnet |" in out  # the path's directory is dropped
    assert main(["report", str(a), str(b), "--label", "base", "--label", "ours", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "base/clean" in out and "ours/clean" in out
    assert main(["report", str(a), str(b), "--label", "only-one"]) == 2
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--diff"]) == 0  # same samples
    capsys.readouterr()
    assert main(["report", str(a), str(c), "--diff"]) == 2
    assert "different samples" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        assert main(["report", str(a), str(c), "--diff", "--force"]) == 0
    assert "different samples" in capsys.readouterr().out
    assert any("samples differ" in r.getMessage() for r in caplog.records)


def test_default_labels_are_short():
    from rfbench.benchmark.eval.report import LABEL_MAX, default_label

    res = {"provenance": {"model": {"name": "/home/u/repo/nets.py:build"}}}
    assert default_label("/x/y/eval/result.json", res) == "nets.py:build"
    res = {"provenance": {"model": {"name": "runs/demo:best"}}}
    assert default_label("/x/runs/demo/eval-best/result.json", res) == "demo:best"
    assert len(default_label("/x/" + "f" * 80 + "/result.json", {"provenance": {"model": {"name": "/" + "n" * 90}}})) <= LABEL_MAX


# -- 11. the notebook runs ---------------------------------------------------------------------------
def test_examples_notebook_executes(tmp_path, monkeypatch):
    nb = json.loads((ROOT / "examples" / "evaluate_your_model.ipynb").read_text())
    assert nb["nbformat"] == 4
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells
    for cell in cells:
        exec(compile("".join(cell["source"]), "notebook", "exec"), ns)  # noqa: S102
    assert isinstance(ns["report"], Report) and ns["report"].result["n_samples"] > 0


def test_example_scripts_compile():
    names = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert {"evaluate_checkpoint.py", "my_defense.py", "sweep.py"} <= names
    for p in (ROOT / "examples").glob("*.py"):
        compile(p.read_text(), str(p), "exec")


@pytest.mark.parametrize("name", ["cifar10", "svhn", "stl10"])
def test_torchvision_sets_test_only_skip_the_training_files(tmp_path, monkeypatch, name):
    """``test_only`` reads only the test files: a missing or unreadable training file does not matter."""
    from test_data_torchvision import make_cifar10, make_stl10, make_svhn

    {"cifar10": make_cifar10, "svhn": make_svhn, "stl10": make_stl10}[name](tmp_path)
    full = load_dataset(name, root=str(tmp_path), val_per_class=1)
    train_file = {"cifar10": "cifar-10-batches-py/data_batch_1", "svhn": "train_32x32.mat",
                  "stl10": "stl10_binary/train_X.bin"}[name]
    (tmp_path / train_file).write_bytes(b"not a dataset")  # reading it would fail
    b = load_dataset(name, root=str(tmp_path), test_only=True)
    assert b.eval_only and torch.equal(b.test.x, full.test.x) and torch.equal(b.test.y, full.test.y)
    x = b.test.x.double() / 255
    np.testing.assert_allclose(b.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-4)  # measured on the test images
