import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# (class name, constructor kwargs, reference norm kwargs) for every loss of the library
LOSS_CASES = [
    ("SumHingeLoss", {}, {"kind": "sum"}),
    ("MaxViolationLoss", {}, {"kind": "max"}),
    ("TopKViolationLoss", {"k": 3}, {"kind": "topk", "k": 3}),
    ("LpViolationLoss", {"p": 2.5}, {"kind": "lp", "p": 2.5}),
    ("MixedViolationLoss", {"mix": 0.3}, {"kind": "mix", "mix": 0.3}),
]
FAST_IMPLS = ["dense", "chunked"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
