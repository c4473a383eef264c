"""Bad flag values are argparse's one-line usage error (exit 2), never a traceback."""

from __future__ import annotations

import pytest

from rfbench.benchmark.cli import main
from rfbench.core.config import parse_number
from rfbench.core.errors import ConfigError


@pytest.mark.parametrize("argv, want", [
    (["eval", "--model", "smallcnn", "--eps", "8/0"], "division by zero"),
    (["eval", "--model", "smallcnn", "--t-sweep", "1,1/0"], "division by zero"),
    (["train", "--eps", "x/2"], "is not a number"),
    (["calibrate", "--run", "r", "--out", "o", "--alpha", "1/0"], "division by zero"),
    (["reproduce", "--dry-run", "--throughput", "0", "t"], "finite number > 0"),
    (["reproduce", "--dry-run", "--throughput=-1", "t"], "finite number > 0"),
    (["reproduce", "--dry-run", "--throughput", "nan", "t"], "finite number > 0"),
])
def test_bad_numbers_are_usage_errors(argv, want, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err


def test_one_fraction_reader():
    assert parse_number("8/255") == 8 / 255 and parse_number(" 0.5 ") == 0.5 and parse_number(3) == 3.0
    for bad in ("1/0", "a", "1/2/3", True):
        with pytest.raises(ConfigError):
            parse_number(bad)
