"""A mistyped registry name gets the closest valid names, for defenses, attacks, datasets and models."""

from __future__ import annotations

import pytest

from rfbench.benchmark.cli import main
from rfbench.core.errors import UnknownNameError


def test_suggestions_are_the_closest_names():
    assert "; did you mean 'trades'?" in str(UnknownNameError("defense", "tardes", ["trades", "pgd-at", "mart"]))
    assert "; did you mean 'pgd-at'?" in str(UnknownNameError("defense", "PGD-AT", ["trades", "pgd-at", "mart"]))
    assert "did you mean" not in str(UnknownNameError("attack", "zzz", ["pgd", "cw"]))
    assert str(UnknownNameError("attack", "zzz", ["pgd", "cw"])) == "unknown attack 'zzz'; valid attacks: pgd, cw"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--defense", "pgdat", "--out", "{tmp}/t"], "did you mean 'pgd-at'"),
    (["train", "--model", "smalcnn", "--out", "{tmp}/t"], "did you mean 'smallcnn'?"),
    (["train", "--dataset", "fashionmnist", "--out", "{tmp}/t"], "did you mean 'fashion-mnist'?"),
    (["eval", "--model", "smallcnn", "--dataset", "fashion-mnist", "--attack", "pgdd", "--out", "{tmp}/e"],
     "did you mean 'pgd'?"),
])
def test_the_command_line_suggests(argv, expected, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err, err
