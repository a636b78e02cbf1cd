import os
import sys

import pytest
import torch

# the test modules import their shared helpers (cases.py, reference.py) from this folder
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
