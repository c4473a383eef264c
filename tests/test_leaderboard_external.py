"""A track of external models (``kind: external``): zoo models submitted, checked and audited like trained entries.

Two locally made SmallCNNs stand in for RobustBench's zoo: ``rfbench zoo --track``
evaluates them with the track's own evaluation, ``rfbench leaderboard submit``
turns each evaluation into an entry (flags, checkpoint sha256, model source,
published AutoAttack number), ``check`` and ``build`` rank them by the worst class,
and ``audit`` re-runs part of an evaluation from the checkpoint and the recorded
source.  An entry whose flags over-claim fails the audit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rfbench.benchmark.cli import main
from rfbench.benchmark.eval.flags import SampleFlags
from rfbench.benchmark.leaderboard import EntryError, check_entry_file, load_track
from rfbench.benchmark.leaderboard.entry_parts import flags_name
from rfbench.core.io.digest import file_sha256

TRACK = "fm-zoo"
ATTACKS = ["fgsm", "pgd:steps=2"]


def _track_yaml(n_per_class: int = 5) -> dict:
    return {"name": TRACK,
            "track": {"id": TRACK, "title": "Fashion-MNIST models as given (test)", "kind": "external", "hardware": "cpu",
                      "protocol": {"dataset": "fashion-mnist", "model": "any", "norm": "linf", "eps": 0.05,
                                   "attacks": ["fgsm", "pgd-2"], "n_per_class": n_per_class,
                                   "test_size": 10 * n_per_class, "checkpoint": "model"}},
            "train": {"dataset": "fashion-mnist"},
            "eval": {"eps": 0.05, "attacks": ATTACKS, "n_per_class": n_per_class, "batch_size": 10},
            "checkpoints": ["model"]}


@pytest.fixture(scope="module")
def zoo(fmnist_cnn, tmp_path_factory):
    """A repository with the external track, two models' checkpoints and their zoo evaluation under the track."""
    base = tmp_path_factory.mktemp("external")
    root = base / "repo"
    (root / "leaderboards" / TRACK).mkdir(parents=True)
    (root / "leaderboards" / TRACK / "track.yaml").write_text(yaml.safe_dump(_track_yaml()))
    torch.save(fmnist_cnn.state_dict(), base / "a.pt")
    other = {k: v.clone() for k, v in fmnist_cnn.state_dict().items()}
    last = [k for k in other if k.endswith("weight")][-1]
    other[last] = other[last] * 0.5
    torch.save(other, base / "b.pt")
    spec = {"dataset": "fashion-mnist",
            "models": [{"name": "net-a", "model": "smallcnn", "weights": "a.pt", "model_args": {"width": 0.25},
                        "published_autoattack": 0.25},
                       {"name": "net-b", "model": "smallcnn", "weights": "b.pt", "model_args": {"width": 0.25}}]}
    (base / "zoo.yaml").write_text(yaml.safe_dump(spec))
    out = base / "out"
    assert main(["zoo", str(base / "zoo.yaml"), "--track", TRACK, "--root", str(root), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    for name in ("net-a", "net-b"):
        assert main(["leaderboard", "submit", str(out / name), "--track", TRACK, "--root", str(root),
                     "--code", f"https://example.org/{name}"]) == 0
    return base, root, out


def _entry(root: Path, eid: str) -> dict:
    return json.loads((root / "leaderboards" / TRACK / f"{eid}.json").read_text())


def test_zoo_models_become_checked_entries_ranked_by_the_worst_class(zoo, tmp_path):
    base, root, out = zoo
    a = _entry(root, "net-a")
    assert a["defense"]["name"] == "external" and a["train_config"] == {} and a["cost"]["train_seconds"] == 0
    assert a["model"] == "smallcnn" and a["provenance"]["source"]["kind"] == "registry"
    assert a["provenance"]["source"]["model_args"] == {"width": 0.25}
    assert a["provenance"]["published_autoattack"] == 0.25 and _entry(root, "net-b")["provenance"]["published_autoattack"] is None
    ev = a["evaluations"]["model"]
    assert ev["checkpoint_sha256"] == file_sha256(base / "a.pt")
    assert ev["attacks"] == ["fgsm", "pgd-2"] and ev["n_per_class"] == [5] * 10
    result = json.loads((out / "net-a" / "result.json").read_text())  # the entry is the evaluation, unchanged
    assert ev["per_class"]["worst_case"] == result["per_class"]["worst_case"]
    assert (root / ev["flags_file"]).is_file()
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    page = (root / "leaderboards" / TRACK / "README.md").read_text()
    assert "RobustBench AA" in page
    row = next(line for line in page.splitlines() if line.startswith("|") and "[net-a]" in line)
    assert "25.0" in [cell.strip() for cell in row.split("|")]  # RobustBench's number beside the mean


def test_the_audit_rebuilds_the_model_from_its_source_and_passes(zoo, capsys):
    base, root, _ = zoo
    entry = root / "leaderboards" / TRACK / "net-a.json"
    assert main(["leaderboard", "audit", str(entry), "--checkpoint", str(base / "a.pt"), "--seed", "3",
                 "--fraction", "1", "--root", str(root)]) == 0
    assert "audit PASS" in capsys.readouterr().out
    assert main(["leaderboard", "audit", str(entry), "--checkpoint", str(base / "b.pt"), "--seed", "3",
                 "--root", str(root)]) == 2
    assert "refusing to audit it against another file" in capsys.readouterr().err


def test_over_claimed_flags_of_an_external_entry_fail_the_audit(zoo, tmp_path, capsys):
    """Flags rewritten to call every image robust (vectors recomputed, so ``check`` passes): the re-run finds them."""
    from test_leaderboard_hostile import _set_vectors

    base, root, _ = zoo
    repo = tmp_path / "repo"
    shutil.copytree(root, repo)
    data = _entry(repo, "net-a")
    ev = data["evaluations"]["model"]
    flags = SampleFlags.load(repo / ev["flags_file"])
    assert (flags.adv_pred != flags.y[:, None]).any()
    flags.clean_pred[:] = flags.y
    flags.adv_pred[:] = flags.y[:, None]
    tmp = tmp_path / "forged.npz"
    flags.save(tmp)
    track = load_track(repo / "leaderboards" / TRACK / "track.yaml")
    ev["flags_file"] = flags_name(track, "net-a", "model", tmp)
    shutil.copyfile(tmp, repo / ev["flags_file"])
    data["evaluations"]["model"] = ev
    _set_vectors_model(data, flags, _set_vectors)
    path = repo / "leaderboards" / TRACK / "net-a.json"
    path.write_text(json.dumps(data))
    check_entry_file(path, repo)  # consistent with its (forged) flags
    assert main(["leaderboard", "audit", str(path), "--checkpoint", str(base / "a.pt"), "--seed", "0",
                 "--root", str(repo)]) == 1
    assert "audit FAIL" in capsys.readouterr().out


def _set_vectors_model(data: dict, flags: SampleFlags, set_vectors) -> None:
    """The hostile tests' vector recomputation, for the ``model`` checkpoint of an external track."""
    data["evaluations"]["best"] = data["evaluations"].pop("model")
    set_vectors(data, flags)
    data["evaluations"]["model"] = data["evaluations"].pop("best")


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["defense"].update(name="pgd-at"), "defense.name must be 'external'"),
    (lambda d: d.update(train_config={"epochs": 3}), "trains nothing"),
    (lambda d: d["cost"].update(train_seconds=12.0), "trains nothing"),
    (lambda d: d["provenance"].pop("source"), "provenance.source"),
    (lambda d: d.update(model="resnet18"), "provenance.source names"),
    (lambda d: d["provenance"].update(published_autoattack=57.3), "fraction in [0, 1]"),
    (lambda d: d.update(seed=4), "evaluates with seed 0"),
])
def test_an_external_entry_that_claims_training_or_another_source_is_refused(zoo, tmp_path, edit, needle):
    _, root, _ = zoo
    repo = tmp_path / "repo"
    shutil.copytree(root, repo)
    data = _entry(repo, "net-b")
    edit(data)
    path = repo / "leaderboards" / TRACK / "net-b.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EntryError) as info:
        check_entry_file(path, repo)
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_zoo_under_a_track_refuses_its_own_evaluation_settings_and_training_tracks(zoo, tmp_path, capsys):
    base, root, _ = zoo
    spec = yaml.safe_load((base / "zoo.yaml").read_text())
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({**spec, "attacks": ["fgsm"], "eps": 0.1}))
    assert main(["zoo", str(tmp_path / "zoo.yaml"), "--track", TRACK, "--root", str(root),
                 "--out", str(tmp_path / "o")]) == 2
    assert "remove attacks, eps from the zoo file" in capsys.readouterr().err
    assert main(["zoo", str(base / "zoo.yaml"), "--track", "fashion-mnist-linf", "--out", str(tmp_path / "o")]) == 2
    assert "trains its entries" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_submit_removes_the_temporary_files_a_killed_submit_left(zoo, tmp_path):
    _, root, out = zoo
    repo = tmp_path / "repo"
    shutil.copytree(root, repo)
    planted = [repo / "leaderboards" / TRACK / ".net-c.json.abcd1234.tmp",
               repo / "leaderboards" / TRACK / "flags" / ".net-c-model-0123456789ab.npz.abcd1234.tmp"]
    for path in planted:
        path.write_bytes(b"half a file")
    assert main(["leaderboard", "submit", str(out / "net-a"), "--track", TRACK, "--root", str(repo),
                 "--code", "https://example.org/net-a", "--force"]) == 0
    assert not any(path.exists() for path in planted)
