"""The interpreter's scalar-to-index conversion (triton <= 3.6 with NumPy >= 2.4): a kernel whose
loop bounds are computed from the program id runs and is exact."""

import os

import numpy as np
import pytest
import torch

from vse_losses.ops import triton_available
from vse_losses.ops.triton_interpreter_compat import _index, patch_interpreter_index

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


class _Handle:
    def __init__(self, data):
        self.data = data


class _Scalar:
    def __init__(self, data):
        self.handle = _Handle(data)


@pytest.mark.parametrize("data", [np.array([7]), np.array(7), np.array([[7]], dtype=np.int32)])
def test_index_of_one_element_arrays(data):
    assert _index(_Scalar(data)) == 7


def test_index_rejects_blocks():
    with pytest.raises(TypeError):  # a block is not an index, as in compiled triton
        _index(_Scalar(np.array([1, 2])))


def _strided_sums_kernel(x_ptr, out_ptr, n, PER):
    # each program sums x[start:end) of its own run-time-bounded slice, one element per iteration
    pid = tl.program_id(0)
    start = pid * PER
    end = tl.minimum(start + PER, n)
    acc = tl.zeros([1], dtype=tl.float32)
    for i in range(start, end):
        acc += tl.load(x_ptr + i + tl.arange(0, 1))
    tl.store(out_ptr + pid + tl.arange(0, 1), acc)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter only")
@pytest.mark.skipif(not triton_available(), reason="no triton the kernels are checked with")
def test_kernel_with_run_time_loop_bounds():
    from vse_losses.ops.triton_common import jitted

    assert patch_interpreter_index()
    n, per = 10, 4
    x = torch.arange(1, n + 1, dtype=torch.float32)
    out = torch.zeros(triton.cdiv(n, per))
    jitted(_strided_sums_kernel)[(out.numel(),)](x, out, n, per)
    torch.testing.assert_close(out, torch.tensor([10.0, 26.0, 19.0]))
