"""Shared fixtures: real Fashion-MNIST loaded once, and a quickly trained tiny SmallCNN.

Tests run torch on ``RFBENCH_TEST_THREADS`` intra-op threads (default 1, also set as
``RFBENCH_THREADS`` so rfbench's load-dependent choice stays out of the tests): the
tensors here are tiny, and on a shared, loaded machine two OpenMP threads
waiting on each other made small convolutions about 20x slower than one thread.
Layout measurements are cached in a directory of the test session.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from rfbench.benchmark.data import iterate_batches, load_dataset
from rfbench.models import create_model

torch.set_num_threads(int(os.environ.get("RFBENCH_TEST_THREADS", "1")))
# the same count for rfbench's own choice (benchmark/train/threads.py) here and in the CLI subprocesses:
# tests compare runs bit for bit, so the machine's load must not pick their thread count
os.environ.setdefault("RFBENCH_THREADS", str(torch.get_num_threads()))
# layout measurements (channels_last: auto) go to a cache of this session, shared with the CLI subprocesses,
# so the tests neither read nor write the user's ~/.cache/rfbench
os.environ.setdefault("RFBENCH_CACHE", tempfile.mkdtemp(prefix="rfbench-test-cache-"))


@pytest.fixture(scope="session")
def fmnist():
    """Fashion-MNIST (balanced, the offline default) loaded once per session."""
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_cnn(fmnist):
    """SmallCNN (width 0.25) after 60 Adam steps of clean training on real images, in eval mode.

    About two thirds accurate and barely robust: attacks have a real signal to
    follow.  Tests must not change its weights.
    """
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1, fmnist.mean, fmnist.std, width=0.25)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for step, (x, y, _) in enumerate(iterate_batches(fmnist.train, 64, shuffle=True, generator=g)):
        if step == 60:
            break
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(autouse=True)
def _fmnist_cnn_restored(request):
    """Whatever a test does to the shared ``fmnist_cnn`` (mode, gradients, ``requires_grad``), the next test
    gets it in eval mode with no gradients: one test's slip must not fail an unrelated later one.  Tests
    that check the library leaves the model alone assert it inside the test, before this runs."""
    yield
    if "fmnist_cnn" in request.fixturenames:
        model = request.getfixturevalue("fmnist_cnn")
        model.eval()
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(True)


def pytest_addoption(parser):
    parser.addoption("--run-track", action="store_true",
                     help="also run the full leaderboard-track reproductions (minutes each; marker 'track')")
    parser.addoption("--kill-count", type=int, default=None, metavar="N",
                     help="SIGKILLs of tests/faults/test_kill_anywhere.py (default 3, or env RFBENCH_KILL_COUNT)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-track"):
        return
    skip = pytest.mark.skip(reason="a full track run takes minutes; pass --run-track")
    for item in items:
        if "track" in item.keywords:
            item.add_marker(skip)
