"""rfbench: a robustness-fairness benchmark for adversarial training.

The harness lives here (data, models, training, evaluation, reporting, CLI);
attacks and defenses are plugins in the sibling packages ``attacks`` and
``defenses``.

Quick use::

    from rfbench.benchmark.data import load_dataset
    from rfbench.models import create_model
    bundle = load_dataset("fashion-mnist")
    model = create_model("smallcnn", num_classes=10, in_channels=1)
"""

from rfbench.core.version import __version__  # noqa: F401  (one version, in rfbench/core/version.py)
