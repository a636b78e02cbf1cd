"""negative_max_triton against a dense float64 reference.

Without CUDA the kernel runs in triton's CPU interpreter (TRITON_INTERPRET=1, set before the
kernel module is first used; the module jits lazily). Interpreted sizes stay small.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from vse_losses.ops.triton_common import TRITON_AVAILABLE  # noqa: E402
from vse_losses.ops.triton_negative_max import negative_max_triton  # noqa: E402

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton not importable")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG_INF = float("-inf")


def dense_reference(x, y, xl, yl, self_ref):
    """Explicit float64 B x M reference: (row_val, row_idx, col_val, col_idx)."""
    s = x.double() @ y.double().T
    neg = xl[:, None] != yl[None, :]
    if self_ref:
        eye = torch.eye(x.shape[0], y.shape[0], dtype=torch.bool, device=x.device)
        neg = neg & ~eye
    sm = torch.where(neg, s, torch.full_like(s, NEG_INF))

    def reduce(mat):  # max and lowest argmax along dim 1, -inf / 0 for empty
        val = mat.max(dim=1).values
        big = mat.shape[1]
        ar = torch.arange(mat.shape[1], device=mat.device).expand_as(mat)
        idx = torch.where(mat == val[:, None], ar, torch.full_like(ar, big)).min(dim=1).values
        idx = torch.where(torch.isinf(val) & (val < 0), torch.zeros_like(idx), idx)
        return val, idx

    rv, ri = reduce(sm)
    cv, ci = reduce(sm.T)
    return rv, ri, cv, ci, s, neg


def make_inputs(B, M, D, dtype, n_labels=None, self_ref=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    y = x.clone() if self_ref else torch.randn(M, D, generator=g)
    if n_labels is None:  # paired form: labels = position
        xl = torch.arange(B)
        yl = xl.clone() if self_ref else torch.arange(M)
    else:
        xl = torch.randint(0, n_labels, (B,), generator=g)
        yl = xl.clone() if self_ref else torch.randint(0, n_labels, (M,), generator=g)
    x = x.to(dtype).to(DEVICE)
    y = x if self_ref else y.to(dtype).to(DEVICE)
    return x, y, xl.to(DEVICE), yl.to(DEVICE)


def check(x, y, xl, yl, self_ref, tol, check_idx=True, **kw):
    rv, ri, cv, ci = negative_max_triton(x, y, xl, yl, self_ref, **kw)
    B, M = x.shape[0], y.shape[0]
    assert rv.shape == (B,) and ri.shape == (B,) and cv.shape == (M,) and ci.shape == (M,)
    assert rv.dtype == torch.float32 and cv.dtype == torch.float32
    assert ri.dtype == torch.int64 and ci.dtype == torch.int64
    erv, eri, ecv, eci, s, neg = dense_reference(x, y, xl, yl, self_ref)
    # values (including -inf for rows/columns without negatives)
    assert torch.equal(torch.isinf(rv.cpu()), torch.isinf(erv.cpu()))
    assert torch.equal(torch.isinf(cv.cpu()), torch.isinf(ecv.cpu()))
    fin_r, fin_c = torch.isfinite(erv), torch.isfinite(ecv)
    torch.testing.assert_close(rv.double()[fin_r], erv[fin_r], rtol=0, atol=tol)
    torch.testing.assert_close(cv.double()[fin_c], ecv[fin_c], rtol=0, atol=tol)
    assert (ri[~fin_r] == 0).all() and (ci[~fin_c] == 0).all()
    # the chosen index is always a negative whose score is the max (up to tol)
    rr = torch.arange(B, device=ri.device)[fin_r]
    assert neg[rr, ri[fin_r]].all()
    torch.testing.assert_close(s[rr, ri[fin_r]], erv[fin_r], rtol=0, atol=tol)
    cc = torch.arange(M, device=ci.device)[fin_c]
    assert neg[ci[fin_c], cc].all()
    torch.testing.assert_close(s[ci[fin_c], cc], ecv[fin_c], rtol=0, atol=tol)
    if check_idx:
        assert torch.equal(ri, eri), (ri - eri).nonzero()
        assert torch.equal(ci, eci), (ci - eci).nonzero()
    return rv, ri, cv, ci


# fp32: exact fp32 products (ieee), differences from float64 are fp32 rounding only
SHAPES = [
    (1, 1, 8),
    (1, 5, 8),
    (2, 2, 8),
    (2, 37, 19),
    (37, 2, 19),
    (45, 29, 33),
    (64, 64, 32),
    (100, 67, 40),
    (131, 131, 24),
]


@pytest.mark.parametrize("B,M,D", SHAPES)
@pytest.mark.parametrize("n_labels", [None, 4])
def test_fp32_cross(B, M, D, n_labels):
    x, y, xl, yl = make_inputs(B, M, D, torch.float32, n_labels, seed=B * 1000 + M)
    check(x, y, xl, yl, False, tol=1e-4)


@pytest.mark.parametrize("B,D", [(1, 8), (2, 8), (3, 5), (50, 33), (97, 20)])
@pytest.mark.parametrize("n_labels", [None, 3])
def test_fp32_self_ref(B, D, n_labels):
    x, y, xl, yl = make_inputs(B, B, D, torch.float32, n_labels, self_ref=True, seed=B)
    check(x, y, xl, yl, True, tol=1e-4)


@pytest.mark.parametrize("tiles", [(16, 32), (32, 16), (16, 64)])
def test_self_ref_rectangular_tiles(tiles):
    # BLOCK_M != BLOCK_N: the diagonal crosses tiles off the (rb == ct) diagonal
    B, D = 100, 16
    x, _, _, _ = make_inputs(B, B, D, torch.float32, seed=12)
    x = torch.nn.functional.normalize(x, dim=1)
    lab = torch.arange(B, device=DEVICE)
    cfg = dict(BLOCK_M=tiles[0], BLOCK_N=tiles[1])
    check(x, x, lab, lab + 1000, True, tol=1e-4, _config=cfg)
    check(x, x, lab % 7, lab % 7, True, tol=1e-4, _config=cfg, _groups=(2, 2))


def test_self_ref_distinct_labels_excludes_diagonal():
    # labels all distinct and x is y: only the self_ref flag excludes (i, i)
    B, D = 40, 16
    x, _, _, _ = make_inputs(B, B, D, torch.float32)
    x = torch.nn.functional.normalize(x, dim=1)  # unit rows: the diagonal is the row max
    lab = torch.arange(B, device=DEVICE)
    ylab = lab + 1000  # every pair, diagonal included, has different labels
    _, ri, _, _ = check(x, x, lab, ylab, True, tol=1e-4)
    assert (ri != torch.arange(B, device=DEVICE)).all()
    # without self_ref the diagonal (1, the largest cosine) wins
    _, ri2, _, _ = check(x, x, lab, ylab, False, tol=1e-4)
    assert torch.equal(ri2, torch.arange(B, device=DEVICE))


@pytest.mark.parametrize("groups", [(1, 1), (2, 3), (3, 2), (100, 100)])
def test_work_split_does_not_change_result(groups):
    B, M, D = 70, 90, 24
    x, y, xl, yl = make_inputs(B, M, D, torch.float32, 5, seed=3)
    ref = negative_max_triton(x, y, xl, yl, False, _groups=(1, 1))
    got = check(x, y, xl, yl, False, tol=1e-4, _groups=groups)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_ties_lowest_index():
    # duplicate key rows and duplicate query rows: exact ties, the lowest index must win. Integer
    # entries make every dot exact in fp32, so duplicates tie bitwise wherever they fall in a
    # tile; random floats would tie only where the summation order happens to agree, which no
    # BLAS or interpreter promises across tile positions
    D = 16
    g = torch.Generator().manual_seed(1)
    base = torch.randint(-3, 4, (10, D), generator=g).float()
    # y: 50 rows from 10 distinct vectors, duplicates spread across several tiles
    y_ids = torch.randint(0, 10, (50,), generator=g)
    x_ids = torch.randint(0, 10, (45,), generator=g)
    y = base[y_ids].to(DEVICE)
    x = base[x_ids].to(DEVICE)
    xl = torch.arange(45, device=DEVICE)
    yl = torch.arange(50, device=DEVICE) + 100
    for groups in [(1, 1), (3, 3), None]:
        rv, ri, _, ci = negative_max_triton(x, y, xl, yl, False, _groups=groups)
        _, eri, _, eci, _, _ = dense_reference(x, y, xl, yl, False)
        # the reference resolves ties exactly on float64 scores of identical rows
        s32 = x @ y.T  # exact integers: bitwise equal for identical rows
        assert torch.equal(ri, eri)
        assert torch.equal(ci, eci)
        # and the winner is the first occurrence of the max in fp32 too
        first_r = (s32 == rv[:, None]).float().argmax(dim=1)
        assert torch.equal(ri, first_r)


def test_all_equal_scores():
    # every score identical (all embeddings equal): ties everywhere, labels decide negatives
    B, M, D = 33, 21, 8
    x = torch.ones(B, D, device=DEVICE)
    y = torch.ones(M, D, device=DEVICE)
    xl = torch.arange(B, device=DEVICE) % 3
    yl = torch.arange(M, device=DEVICE) % 3
    check(x, y, xl, yl, False, tol=0)
    # no negative at all
    rv, ri, cv, ci = negative_max_triton(
        x, y, torch.zeros(B, dtype=torch.long, device=DEVICE), torch.zeros(M, dtype=torch.long, device=DEVICE), False
    )
    assert torch.isneginf(rv).all() and torch.isneginf(cv).all()
    assert (ri == 0).all() and (ci == 0).all()


def test_fp16():
    # fp16 inputs, fp32 accumulation: compare with float64 of the fp16 values; indices on
    # integer-valued inputs (exact products, no near ties) and on random inputs through the
    # "selected score is the max" check
    B, M, D = 77, 53, 40
    x, y, xl, yl = make_inputs(B, M, D, torch.float16, 6, seed=7)
    check(x, y, xl, yl, False, tol=1e-3, check_idx=False)
    g = torch.Generator().manual_seed(11)
    xi = torch.randint(-8, 9, (B, D), generator=g).to(torch.float16).to(DEVICE)
    yi = torch.randint(-8, 9, (M, D), generator=g).to(torch.float16).to(DEVICE)
    check(xi, yi, xl, yl, False, tol=0)  # exact integers: indices must match exactly
    check(xi, xi, xl, xl, True, tol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot needs a GPU")
def test_bf16_gpu():
    B, M, D = 300, 257, 96
    x, y, xl, yl = make_inputs(B, M, D, torch.bfloat16, 10, seed=5)
    check(x, y, xl, yl, False, tol=1e-3, check_idx=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-size check")
def test_gpu_default_tiles_large():
    B, M, D = 1000, 1300, 200
    x, y, xl, yl = make_inputs(B, M, D, torch.float32, 50, seed=9)
    check(x, y, xl, yl, False, tol=1e-3, check_idx=False)


def test_empty():
    x = torch.zeros(0, 4, device=DEVICE)
    y = torch.randn(3, 4, device=DEVICE)
    rv, ri, cv, ci = negative_max_triton(
        x, y, torch.zeros(0, dtype=torch.long, device=DEVICE), torch.arange(3, device=DEVICE), False
    )
    assert rv.shape == (0,) and torch.isneginf(cv).all() and (ci == 0).all()
