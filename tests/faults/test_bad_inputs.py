"""Bad input gets one clear line, exit status 2, never a traceback from deep inside.

Unknown names list the valid ones; malformed YAML, unknown keys, wrong types
and out-of-range values name the key and what was expected; a missing or
partial dataset root names the exact path and how to get the data; a user
model with the wrong output shape is refused, and one returning probabilities
or answering differently each time is reported in the result's checks.
Most cases go through ``rfbench.benchmark.cli.main`` in process (the console script's
code path); a few run as real subprocesses to prove the process-level contract.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from faultkit import assert_one_line_error, rfbench

from rfbench.benchmark.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")
# validation happens before any data is loaded or any training starts: these never train
TRAIN = ["train", "--device", "cpu", "--epochs", "1", "--max-train-samples", "20", "--val-per-class", "1"]
EVAL = ["eval", "--model", "smallcnn", "--weights", "missing.pt", "--dataset", "fashion-mnist", "--device", "cpu"]


def _cli(capsys, argv: list[str], *fragments: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return assert_one_line_error(err, *fragments)


@pytest.mark.parametrize("argv, fragments", [
    (TRAIN + ["--dataset", "fashion-mnis"], ["unknown dataset 'fashion-mnis'", "valid datasets:", "fashion-mnist", "cifar10"]),
    (TRAIN + ["--model", "resnet19"], ["unknown model 'resnet19'", "valid models:", "resnet18", "smallcnn"]),
    (TRAIN + ["--defense", "trade"], ["unknown defense 'trade'", "valid defenses:", "trades", "pgd-at"]),
    (EVAL + ["--attack", "pgdd"], ["unknown attack 'pgdd'", "valid attacks:", "pgd", "fgsm", "autoattack"]),
], ids=["dataset", "model", "defense", "attack"])
def test_unknown_names_list_the_valid_ones(capsys, tmp_path, argv, fragments):
    _cli(capsys, argv + (["--out", str(tmp_path / "o")] if argv[0] == "train" else []), *fragments)


@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [
    (TRAIN + ["--dataset", "cifar-11"], "unknown dataset 'cifar-11'; valid datasets: "),
    (EVAL + ["--attack", "tpgd"], "unknown attack 'tpgd'; valid attacks: "),
], ids=["dataset", "attack"])
def test_unknown_names_in_a_real_process(tmp_path, argv, fragment):
    proc = rfbench(argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line_error(proc.stderr, fragment)
    assert proc.stderr.count("\n") == 1  # the one line is all there is


@pytest.mark.parametrize("text, fragments", [
    ("epochs: 3\n  lr: [0.1\n", ["malformed YAML in", "at line 2"]),
    ("epochs: 3\nlr: [0.1, 0.2\n", ["malformed YAML in", "line"]),
    ("epochs:\t3\n\tlr: 1\n", ["malformed YAML in"]),
    ("seed: 2001-02-30\n", ["malformed YAML in", "bad value"]),
    ("seed: !!int x\n", ["malformed YAML in", "bad value"]),
    ("eps: !!python/object/apply:os.system ['touch /tmp/rfbench-yaml-pwned']\n", ["malformed YAML in"]),
    ("- epochs: 3\n", ["expected a mapping of key: value at the top level, got list"]),
    ("[" * 5000, ["malformed YAML in", "nested too deeply"]),
], ids=["indent", "unclosed", "tabs", "bad-date", "bad-tag", "python-tag", "list", "deep"])
def test_malformed_yaml_is_one_line(capsys, tmp_path, text, fragments):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    _cli(capsys, TRAIN + ["--config", str(cfg), "--out", str(tmp_path / "o")], str(cfg), *fragments)
    assert not Path("/tmp/rfbench-yaml-pwned").exists()


def test_non_utf8_yaml(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"epochs: \xff\xfe\n")
    _cli(capsys, TRAIN + ["--config", str(cfg)], f"malformed YAML in {cfg}: not UTF-8 text")


@pytest.mark.parametrize("source, fragments", [
    ("yaml:epoch: 3", ["config: unknown key 'epoch' (did you mean 'epochs'?)", "valid keys:"]),
    ("override:lerning_rate=0.1", ["config: unknown key 'lerning_rate'"]),
    ("override:defense_args.bta=6", ["defense 'pgd-at': unknown key 'bta'"]),
    ("yaml:val_steps: ten", ["config: 'val_steps' must be an integer, got 'ten'"]),
    ("yaml:lr: [0.1]", ["config: 'lr' must be a finite number, got [0.1]"]),
    ("yaml:nesterov: 3", ["config: 'nesterov' must be true or false, got 3"]),
    ("yaml:milestones: 5", ["config: 'milestones' must be a list, got 5"]),
    ("yaml:model_kwargs: [1]", ["config: 'model_kwargs' must be a mapping"]),
    ("yaml:eps: -0.1", ["config: 'eps' must be a number in [0, 1], got -0.1"]),
    ("yaml:eps: 1.5", ["config: 'eps' must be a number in [0, 1], got 1.5"]),
    ("yaml:eps: .nan", ["config: 'eps' must be a finite number, got nan"]),
    ("override:eps=8/0", ["config: 'eps' must be a finite number, got '8/0'"]),
    ("yaml:steps: 0", ["config: 'steps' must be a number in [1, inf], got 0"]),
    ("yaml:imbalance_ratio: 0.5", ["config: 'imbalance_ratio' must be a number in [1, inf], got 0.5"]),
    ("yaml:optimizer: adagrad", ["config: 'optimizer' must be one of sgd, adam, adamw; got 'adagrad'"]),
    ("yaml:seed: 100000000000000000000", ["config: 'seed' must be a number in [0, "]),
    ("yaml:milestones: [0]", ["config: 'milestones' must be epochs >= 1"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_config_values_name_the_key(capsys, tmp_path, source, fragments):
    kind, _, text = source.partition(":")
    argv = TRAIN + ["--out", str(tmp_path / "o")]
    if kind == "yaml":
        (tmp_path / "c.yaml").write_text(text + "\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
    else:
        argv += [text]
    _cli(capsys, argv, *fragments)
    assert not (tmp_path / "o").exists(), "a bad config must be refused before anything is written"


@pytest.mark.parametrize("flags, fragment", [
    (["--eps", "-0.1"], "config: 'eps' must be a number in [0, 1], got -0.1"),
    (["--eps", "1.5"], "config: 'eps' must be a number in [0, 1], got 1.5"),
    (["--steps", "0"], "config: 'steps' must be a number in [1, inf], got 0"),
    (["--imbalance-ratio", "0.5"], "config: 'imbalance_ratio' must be a number in [1, inf], got 0.5"),
    (["--batch-size", "0"], "config: 'batch_size' must be a number in [1, inf], got 0"),
], ids=["eps<0", "eps>1", "steps<1", "rho<1", "batch<1"])
def test_out_of_range_flags(capsys, tmp_path, flags, fragment):
    _cli(capsys, TRAIN + flags + ["--out", str(tmp_path / "o")], fragment)


@pytest.mark.parametrize("spec, fragment", [
    ("pgd:eps=-0.1", "--attack pgd:eps=-0.1: attack 'pgd': 'eps' must be a number in [0, inf], got -0.1"),
    ("pgd:eps=2", "--attack pgd:eps=2: 'eps' must be in [0, 1] for the linf norm"),
    ("pgd:steps=0", "--attack pgd:steps=0: attack 'pgd': 'steps' must be a number in [1, inf], got 0"),
    ("pgd:stepz=3", "attack 'pgd': unknown key 'stepz' (did you mean 'steps'?)"),
    ("temperature-pgd:T=abc", "'T'"),
    ("autoattack:version=fast", "'version' must be one of standard, plus, custom"),
], ids=["eps<0", "eps>1", "steps<1", "unknown-key", "wrong-type", "bad-choice"])
def test_bad_attack_specs(capsys, spec, fragment):
    _cli(capsys, EVAL + ["--attack", spec], fragment)


def test_eval_eps_out_of_range(capsys, tmp_path):
    _cli(capsys, EVAL + ["--eps", "-1"], "config: 'eps' must be a number in [0, inf], got -1.0")


# -- dataset roots -------------------------------------------------------------------------------
def test_missing_dataset_root_names_the_path_and_how_to_get_it(capsys, tmp_path):
    root = tmp_path / "no-such-dir"
    # exactly the places under the given root: an explicit root is never silently swapped for another copy
    _cli(capsys, TRAIN + ["--data-root", str(root), "--out", str(tmp_path / "o")],
         f"Fashion-MNIST not found (looked in: {root}, {root / 'FashionMNIST' / 'raw'}, {root / 'fashion-mnist'})",
         "apt-get install dataset-fashion-mnist", "--download", "--data-root DIR")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian Fashion-MNIST files")
def test_partial_dataset_root_names_the_missing_files(capsys, tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(FASHION / f"{stem}.gz", root / f"{stem}.gz")
    _cli(capsys, TRAIN + ["--data-root", str(root), "--out", str(tmp_path / "o")],
         f"{root} holds only part of it (missing {root / 't10k-images-idx3-ubyte'}[.gz], "
         f"{root / 't10k-labels-idx1-ubyte'}[.gz])", "--download")


def test_missing_cifar_root_names_the_expected_layout(capsys, tmp_path):
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    _cli(capsys, TRAIN + ["--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp_path / "o")],
         f"in {root / 'cifar-10-batches-py'}", "--download")


# -- user models ----------------------------------------------------------------------------------
USER_MODELS = '''
import torch
from torch import nn
from rfbench.models import create_model


def _base(num_classes, in_channels, mean, std):
    torch.manual_seed(0)
    return create_model("smallcnn", num_classes, in_channels, mean, std, width=0.25)


class WrongShape(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x)[:, :5]


class Probabilities(WrongShape):
    def forward(self, x):
        return self.base(x).softmax(1)


class Noisy(WrongShape):
    def forward(self, x):
        return self.base(x) + torch.randn(x.shape[0], 10)


class Flat(WrongShape):
    def forward(self, x):
        return self.base(x).flatten()


def wrong_shape(**kw):
    return WrongShape(_base(**kw))


def probabilities(**kw):
    return Probabilities(_base(**kw))


def noisy(**kw):
    return Noisy(_base(**kw))


def flat(**kw):
    return Flat(_base(**kw))


def logits(**kw):
    return _base(**kw)
'''


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(USER_MODELS)
    return path


def _eval_user(tmp_path, user_models, factory: str, *extra: str) -> list[str]:
    return ["eval", "--model", f"{user_models}:{factory}", "--allow-code", "--dataset", "fashion-mnist",
            "--n-per-class", "3", "--attack", "fgsm", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / factory), *extra]


@pytest.mark.parametrize("factory, fragment", [
    ("wrong_shape", "the model returned shape (30, 5) for a batch of 30 images, expected (30, 10)"),
    ("flat", "the model returned shape (300,) for a batch of 30 images, expected (30, 10)"),
])
def test_user_model_with_the_wrong_output_shape_is_refused(capsys, tmp_path, user_models, factory, fragment):
    _cli(capsys, _eval_user(tmp_path, user_models, factory), fragment)
    assert not (tmp_path / factory / "result.json").exists()


@pytest.mark.parametrize("factory, finding, aa_flag", [
    ("probabilities", "probabilities", "softmax-output"),
    ("noisy", "nondeterministic", "randomized"),
    ("logits", None, None),
])
def test_user_model_probabilities_and_nondeterminism_are_reported(caplog, tmp_path, user_models, factory, finding,
                                                                  aa_flag):
    with caplog.at_level(logging.WARNING):
        assert main(_eval_user(tmp_path, user_models, factory)) == 0
    said = [r.getMessage() for r in caplog.records]
    checks = json.loads((tmp_path / factory / "result.json").read_text())["checks"]
    model = checks["model"]
    if finding is None:
        assert model["verdict"] == "pass" and not model["findings"] and not model["autoattack_checks"]
        return
    assert model["verdict"] == "warn" and checks["overall"] in ("warn", "fail")
    assert list(model["findings"]) == [finding] and aa_flag in model["autoattack_checks"]
    assert f"model check: {model['findings'][finding]}" in said  # said on the terminal too
