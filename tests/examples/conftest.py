"""Puts examples/ on sys.path for these tests; shared fixtures.

tests/examples is a package (``__init__.py``) so that this conftest is imported as
``examples.conftest`` and does not take the place of tests/conftest.py as ``conftest``.
"""

import os
import sys

import pytest

from .helpers import TINY

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic_cache"))


@pytest.fixture
def synth_args(synth_cache):
    """Options for a tiny run on the embedded data."""
    return [
        "--data_cache",
        synth_cache,
        "--synthetic_train",
        "64",
        "--synthetic_dev",
        "20",
        "--synthetic_test",
        "20",
        "--pretrain_images",  # a tiny pretraining of the smallcnn (cached in synth_cache)
        "32",
        "--pretrain_epochs",
        "1",
    ] + TINY


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads crawl on a busy CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
