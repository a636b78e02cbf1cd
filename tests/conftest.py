import os

import pytest
import torch

# Without CUDA the Triton kernels run in triton's CPU interpreter. Set once, before any test
# module imports the library: the kernels are jitted at first use, in the mode set then.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
