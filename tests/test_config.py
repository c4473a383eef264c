"""Config precedence (defaults < YAML < flags < key=value) and one-line validation errors."""

import pytest

from rfbench.benchmark.cli import build_parser
from rfbench.benchmark.cli.config_args import resolve_config
from rfbench.benchmark.train.config import TrainConfig
from rfbench.core.config import from_dict
from rfbench.core.errors import ConfigError


def _resolve(argv, tmp_path=None, yaml_text=None):
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
        argv = ["train", "--config", str(path), *argv]
    else:
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    return resolve_config(TrainConfig, args, args.config, args.overrides)


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    assert _resolve([]).epochs == TrainConfig().epochs
    yaml_text = "epochs: 7\nlr: 0.05\nbatch_size: 32\ndefense_args: {beta: 3}\n"
    cfg = _resolve([], tmp_path, yaml_text)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.defense_args) == (7, 0.05, 32, {"beta": 3})
    cfg = _resolve(["--epochs", "9", "--lr", "0.2"], tmp_path, yaml_text)
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (9, 0.2, 32)
    cfg = _resolve(["--epochs", "9", "epochs=11", "defense_args.beta=6", "defense_args.gamma=0.5"], tmp_path, yaml_text)
    assert cfg.epochs == 11
    assert cfg.defense_args == {"beta": 6, "gamma": 0.5}


def test_fraction_eps_and_lists():
    cfg = _resolve(["--eps", "8/255", "--milestones", "75,90", "alpha=2/255"])
    assert cfg.eps == pytest.approx(8 / 255)
    assert cfg.alpha == pytest.approx(2 / 255)
    assert cfg.milestones == [75, 90]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"epoch": 3}, "unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"epochs": "three"}, "'epochs' must be an integer"),
        ({"epochs": 0}, "'epochs' must be a number in [1, inf]"),
        ({"eps": -0.1}, "'eps' must be a number in [0, 1]"),
        ({"eps": 1.5}, "'eps' must be a number in [0, 1]"),
        ({"steps": 0}, "'steps' must be a number in [1, inf]"),
        ({"imbalance_ratio": 0.5}, "'imbalance_ratio' must be a number in [1, inf]"),
        ({"optimizer": "lbfgs"}, "'optimizer' must be one of sgd, adam, adamw"),
        ({"download": "yes"}, "'download' must be true or false"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainConfig, data)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"malformed YAML in .*c.yaml at line 2"):
        _resolve([], tmp_path, "epochs: 2\nlr: : 0.1\nseed: 1\n")
