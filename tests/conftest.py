import os

import pytest


def pytest_configure(config):
    if config.getoption("benchmark_only", False):  # the benchmarks run compiled kernels only
        return
    import torch

    # Without CUDA the Triton kernels run in triton's CPU interpreter. Set once, before any test
    # module imports the library: the kernels are jitted at first use, in the mode set then.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
