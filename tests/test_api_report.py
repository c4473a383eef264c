"""What a notebook user sees of a Report: ``per_class`` indexed by class name, ``plot()`` shown as an image."""

from __future__ import annotations

import pytest
import torch

import rfbench

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
    return rfbench.evaluate(model, x, y, eps=0.1, attacks=["fgsm"], classes=CLASSES, device="cpu", quiet=True)


def test_per_class_is_indexed_by_class_name(report):
    pc = report.per_class
    assert list(pc.index) == CLASSES
    assert pc.loc["dog", "clean"] == report.result["per_class"]["clean"][1]
    assert pc.loc["frog", "n"] == 10
    assert list(pc["class"]) == CLASSES  # the column stays, for code that reads it
    for col in ("boundary_error", "cfps_worst_case"):
        assert col in pc.columns and col in (type(report).per_class.__doc__ or "")


def test_plot_displays_as_an_image_and_leaves_pyplot_alone(report):
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    open_before = plt.get_fignums()
    for kind in ("per_class", "confusion"):
        fig = report.plot(kind=kind)
        png = fig._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert fig.axes
    assert plt.get_fignums() == open_before  # nothing left open in pyplot, so nothing printed as <Figure ...>
    assert matplotlib.get_backend() == backend


def test_ipython_shows_the_plot_as_png(report):
    """IPython's display formatter (what a notebook uses for a cell's last expression) renders a PNG."""
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactiveshell.InteractiveShell.instance()
    data, _ = shell.display_formatter.format(report.plot())
    assert "image/png" in data


def test_the_shipped_notebook_shows_its_plot():
    """The example notebook is stored executed: its plot cell ends with ``report.plot()`` and holds the image."""
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "examples" / "evaluate_your_model.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "report.plot()" in "".join(c["source"])]
    assert cells, "the notebook has no plot cell"
    last_line = "".join(cells[0]["source"]).strip().splitlines()[-1]
    assert last_line.startswith("report.plot()"), "the plot must be the cell's last expression to be displayed"
    outputs = cells[0].get("outputs", [])
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not any("<Figure" in "".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
