"""Sharded evaluation: shards merged equal one process bit for bit; a killed shard resumes alone; torchrun and Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from rfbench.benchmark.cli import build_parser, main
from rfbench.benchmark.eval import EvalConfig, SampleFlags, evaluate
from rfbench.benchmark.eval.shard import Shard, ShardsIncomplete, batch_owners, shard_class_counts, shard_from_env
from rfbench.core.errors import ConfigError, RfbenchError

ATTACKS = ["fgsm", "pgd:steps=3,start=uniform", "autoattack:version=custom,attacks=apgd-ce,steps=2,restarts=1"]
ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = ("per_class", "per_class_ci95", "summary", "confusion", "cfps", "checks", "robustbench", "samples")
FLAG_KEYS = ("index", "y", "clean_pred", "adv_pred", "ran", "pert", "done")


def _cfg(**kw):
    base = dict(attacks=ATTACKS, eps=0.05, n_per_class=3, batch_size=8, device="cpu", quiet=True)
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def single(fmnist, fmnist_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, evaluate(fmnist_cnn, fmnist, _cfg(), out)


def _same(a_dir: Path, b_dir: Path, a: Mapping, b: Mapping) -> None:
    fa, fb = SampleFlags.load(a_dir / "flags.npz"), SampleFlags.load(b_dir / "flags.npz")
    for key in FLAG_KEYS:
        np.testing.assert_array_equal(getattr(fa, key), getattr(fb, key), err_msg=key)
    for key in RESULT_KEYS:
        assert a[key] == b[key], key


def test_three_shards_merge_to_the_single_process_result(fmnist, fmnist_cnn, single, tmp_path):
    out1, res1 = single
    seen: dict[int, list[int]] = {}
    for k in (2, 0):  # shards finish in any order; before the last one no result exists
        with pytest.raises(ShardsIncomplete, match="shard-1-of-3"):
            evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(k, 3), callback=seen.setdefault(k, []).append)
        assert not (tmp_path / "result.json").exists()
    merged = evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(1, 3), callback=seen.setdefault(1, []).append)
    owners = batch_owners(SampleFlags.load(out1 / "flags.npz").y, 8, 3)  # 30 samples: 4 whole batches
    assert {k: sorted(v) for k, v in seen.items()} == {k: np.flatnonzero(owners == k).tolist() for k in range(3)}
    assert sorted(np.bincount(owners, minlength=3).tolist()) == [1, 1, 2]
    assert merged["provenance"]["shards"] == 3 and "shards" not in res1["provenance"]
    _same(out1, tmp_path, res1, merged)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["summary"] == res1["summary"]
    # the merge step alone gives the same again (e.g. after deleting result.json)
    (tmp_path / "result.json").unlink()
    again = evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(None, 3))
    _same(out1, tmp_path, res1, again)


class _Kill(Exception):
    pass


def test_a_killed_shard_resumes_alone(fmnist, fmnist_cnn, single, tmp_path):
    out1, res1 = single

    def die(batch):
        if batch == 0:
            raise _Kill

    assert batch_owners(SampleFlags.load(out1 / "flags.npz").y, 8, 2).tolist() == [0, 1, 0, 1]
    with pytest.raises(_Kill):  # shard 0 owns batches 0 and 2; killed after batch 0 was saved
        evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(0, 2), callback=die)
    with pytest.raises(ShardsIncomplete):
        evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(1, 2))
    with pytest.raises(ShardsIncomplete, match=r"shard-0-of-2 \(8 of 16 samples\)"):
        evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(None, 2))
    seen: list[int] = []
    merged = evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(0, 2), callback=seen.append)
    assert seen == [2]  # only its unfinished batch
    _same(out1, tmp_path, res1, merged)


def test_shards_finishing_together_merge_one_at_a_time(fmnist, fmnist_cnn, single, tmp_path):
    """A shard that finishes while another merges waits for OUT's merge lock, so no two merges write at once."""
    import threading
    import time

    from rfbench.core.io.lock import exclusive_dir

    out1, res1 = single
    with pytest.raises(ShardsIncomplete):
        evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(0, 2))
    attacked = threading.Event()
    done: dict[str, object] = {}

    def last_shard() -> None:
        done["result"] = evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(1, 2),
                                  callback=lambda b: attacked.set())

    with exclusive_dir(tmp_path / "merge", "the shard merge of"):  # another shard's merge in progress
        worker = threading.Thread(target=last_shard)
        worker.start()
        assert attacked.wait(120)
        time.sleep(1.0)
        assert worker.is_alive() and not (tmp_path / "result.json").exists() and not (tmp_path / "flags.npz").exists()
    worker.join(120)
    assert not worker.is_alive()
    _same(out1, tmp_path, res1, done["result"])  # type: ignore[arg-type]


def test_merge_refuses_shards_of_another_evaluation(fmnist, fmnist_cnn, tmp_path):
    with pytest.raises(ShardsIncomplete):
        evaluate(fmnist_cnn, fmnist, _cfg(), tmp_path, shard=Shard(0, 2))
    with pytest.raises(RfbenchError, match="different evaluation"):
        evaluate(fmnist_cnn, fmnist, _cfg(seed=1), tmp_path, shard=Shard(None, 2))
    with pytest.raises(RfbenchError, match="output directory"):
        evaluate(fmnist_cnn, fmnist, _cfg(), None, shard=Shard(0, 2))


def test_shards_keep_the_class_shares(fmnist):
    """On the real test set, each shard's class counts stay near its share (round robin strays 3× further)."""
    y = fmnist.test.y.numpy()
    counts = shard_class_counts(y, batch_size=64, count=4, num_classes=10)
    assert counts.sum(0).tolist() == np.bincount(y).tolist()
    assert sorted(np.bincount(batch_owners(y, 64, 4)).tolist()) == [39, 39, 39, 40]  # 157 batches
    share = counts.sum(1, keepdims=True) * np.bincount(y) / len(y)
    assert np.abs(counts - share).max() <= 8  # 1000 per class, about 250 per shard
    round_robin = np.stack([np.bincount(y[(np.arange(len(y)) // 64) % 4 == k], minlength=10) for k in range(4)])
    assert np.abs(round_robin - share).max() > 20
    # deterministic, and a function of the labels only
    assert batch_owners(y, 64, 4).tolist() == batch_owners(y.copy(), 64, 4).tolist()


def test_shard_parsing_and_launcher_env():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).name == "shard-1-of-4" and Shard(None, 4).merging
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)
    assert shard_from_env({"WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    assert shard_from_env({"WORLD_SIZE": "3", "RANK": "2", "MASTER_ADDR": "h"}) == Shard(2, 3)
    with pytest.raises(ConfigError, match="RANK"):
        shard_from_env({"WORLD_SIZE": "3"})


def _eval_options(command: str = "eval") -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    p = sub.choices[command]  # type: ignore[union-attr]
    return sorted(s for a in p._actions for s in a.option_strings if s.startswith("--") and s not in ("--help", "--run"))


def test_torchrun_leaves_every_eval_flag_to_rfbench():
    """torchrun's own parser (which claims abbreviations of its options anywhere) passes every eval and zoo flag through."""
    run = pytest.importorskip("torch.distributed.run")
    parser = run.get_args_parser()
    for command in ("eval", "zoo"):
        head = ["--standalone", "--nproc-per-node", "2", "-m", "rfbench", command]
        opts = _eval_options(command)
        assert "--shard" in opts and (command != "eval" or "--run-dir" in opts)
        for opt in opts:
            tail = [opt, "x"]
            ns = parser.parse_args(head + tail)
            assert ns.training_script == "rfbench" and ns.training_script_args == [command] + tail, opt
    with pytest.raises(SystemExit):  # the reason for --run-dir: torchrun takes --run for --run-path/--run_path
        parser.parse_args(head + ["--run", "x"])


def _weights(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _cli(tmp_path: Path, weights: Path, out: Path) -> list[str]:
    return ["eval", "--model", "smallcnn", "--model-arg", "width=0.25", "--weights", str(weights),
            "--dataset", "fashion-mnist", "--n-per-class", "3", "--batch-size", "8", "--device", "cpu",
            "--eps", "0.05", "--quiet", "--out", str(out), "--channels-last", "off",
            *[x for a in ATTACKS for x in ("--attack", a)]]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(fmnist_cnn, tmp_path):
    """The real launcher: ``torchrun --standalone --nproc-per-node 2 -m rfbench eval ...`` against one process."""
    w = _weights(fmnist_cnn, tmp_path / "w.pt")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_cli(tmp_path, w, one)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "rfbench", *_cli(tmp_path, w, two)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in two.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    a, b = json.loads((one / "result.json").read_text()), json.loads((two / "result.json").read_text())
    _same(one, two, a, b)
    assert b["provenance"]["shards"] == 2


@pytest.mark.slow
def test_ray_shards_equal_one(fmnist_cnn, tmp_path):
    """``--shards 2 --executor ray``: two Ray tasks through the runner's executor, merged last."""
    pytest.importorskip("ray")
    w = _weights(fmnist_cnn, tmp_path / "w.pt")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_cli(tmp_path, w, one)) == 0
    assert main(_cli(tmp_path, w, two) + ["--shards", "2", "--executor", "ray"]) == 0
    a, b = json.loads((one / "result.json").read_text()), json.loads((two / "result.json").read_text())
    _same(one, two, a, b)


def test_library_evaluate_takes_shards(fmnist_cnn, tmp_path):
    """``rfbench.evaluate(..., shard="K/N")``: two shards then the merge equal the unsharded call."""
    import rfbench

    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(20) % 10
    kw = dict(eps=0.05, attacks=["pgd:steps=2"], batch_size=4, device="cpu", quiet=True)
    whole = rfbench.evaluate(fmnist_cnn, x, y, out=tmp_path / "one", **kw)
    with pytest.raises(ShardsIncomplete):
        rfbench.evaluate(fmnist_cnn, x, y, out=tmp_path / "two", shard="1/2", **kw)
    with pytest.raises(ShardsIncomplete):
        rfbench.evaluate(fmnist_cnn, x, y, out=tmp_path / "two", shard="merge/2", **kw)
    last = rfbench.evaluate(fmnist_cnn, x, y, out=tmp_path / "two", shard="0/2", **kw)
    _same(tmp_path / "one", tmp_path / "two", whole.result, last.result)
