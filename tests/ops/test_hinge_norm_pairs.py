"""The one-pass, both-direction hinge norms (the chunked torch ``hinge_norm_pairs``) against the
explicit float64 loop of their formula (tests/support/reference.py): values and the gradients of x,
y and the pairs' margins (the op computes the thresholds ``s(a, p) − α`` itself: ∂α = −∂t, and
∂t reaches x and y inside its backward). Dot products, and the cosine folded in (``cosine=True``:
the scales applied to the score tiles and the pairs' scores, no normalised copies) on rows whose
norms span 1e-3 … 1e3, with gradcheck. (The Triton op: tests/ops/test_triton_hinge_norm_pairs.py.)"""

import pytest
import torch

from tests.support.reference import hinge_pairs_loop, lse_case
from vse_losses.functional import positive_pairs
from vse_losses.ops import hinge_norm_pairs, tiling
from vse_losses.ops.chunked_hinge_norm_pairs import hinge_norm_pairs_chunked

F64 = torch.float64
KINDS = ["paired", "labels", "self_ref"]
DIRECTIONS = {"both": (True, True), "i2t": (True, False), "t2i": (False, True)}


def inputs(case, dtype=F64):
    """Leaves x, y (self_ref: y is x) and the margins (float64, or float32 for other inputs), and the
    op's other arguments ``(a, p_idx, labels, ref_labels, self_ref)``."""
    x = case["x"].to(dtype).requires_grad_()
    y = x if case["self_ref"] else case["y"].to(dtype).requires_grad_()
    margin = case["margin"].to(F64 if dtype == F64 else torch.float32).requires_grad_()
    rest = tuple(case[k] for k in ("a", "p_idx", "labels", "ref_labels", "self_ref"))
    return x, y, margin, rest


def weighted(fn, x, y, margin, rest, p, directions="both", **kw):
    """(T¹, T², ∂x, ∂y | ∂margin, ∂margin) of ``Σ w¹T¹ + w²T²`` (random weights of both signs) by ``fn``
    (the op or the loop); self_ref: one leaf x for both sides."""
    T1, T2 = fn(x, y, margin, *rest, p, *DIRECTIONS[directions], **kw)
    g = torch.Generator().manual_seed(3)
    w1, w2 = (torch.randn(T1.shape[0], generator=g, dtype=F64).to(T1.dtype) for _ in range(2))
    leaves = [x] + ([] if y is x else [y]) + [margin]
    return [T1.detach(), T2.detach(), *torch.autograd.grad((T1 * w1).sum() + (T2 * w2).sum(), leaves)]


def assert_rows_close(got, ref, rtol, atol=1e-13):
    """Each tensor to ``rtol`` of its largest entry; a gradient of x or y row by row (the cosine's
    gradient of row i scales as 1/‖row i‖, here 1e-3 … 1e3)."""
    for i, (g, r) in enumerate(zip(got, ref)):
        g, r = g.double(), r.double()
        scale = r.abs().amax(-1, keepdim=True) if r.dim() == 2 else r.abs().max()
        bad = (g - r).abs() > rtol * scale + atol
        assert not bad.any(), f"output {i}: {bad.nonzero().tolist()[:5]}: {g[bad][:5]} vs {r[bad][:5]}"


CASES = {
    "diagonal": (torch.arange(9), torch.arange(9), False),
    "permuted": (torch.arange(9), torch.tensor([3, 1, 0, 2, 4, 8, 5, 6, 7]), False),
    "duplicates": (torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5]), torch.tensor([0, 1, 1, 2, 3, 3, 4, 5, 5]), False),
    "one modality": (torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5]), None, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("tile", [1, 4, 1000])
def test_matches_float64_loop(case, p, tile, monkeypatch):
    monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(tiling, "TILE_ELEMENTS", tile * 30)
    labels, ref_labels, self_ref = CASES[case]
    ref_labels = labels if ref_labels is None else ref_labels
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 4, dtype=F64, generator=g)
    y = x if self_ref else torch.randn(9, 4, dtype=F64, generator=g)
    a, p_idx = positive_pairs(labels, ref_labels, self_ref)
    # margins of both signs, one per pair: hinges active and inactive
    margin = 2 * torch.randn(len(a), dtype=F64, generator=g)
    c = dict(x=x, y=y, margin=margin, a=a, p_idx=p_idx, labels=labels, ref_labels=ref_labels, self_ref=self_ref)
    got = weighted(hinge_norm_pairs, *inputs(c), p)
    ref = weighted(hinge_pairs_loop, *inputs(c), p)
    assert_rows_close(got, ref, 1e-10)


def test_one_direction_only():
    x, y = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    idx = torch.arange(5)
    T1, T2 = hinge_norm_pairs(x, y, 0.5, idx, idx, idx, idx, False, 2.0, do_i2t=True, do_t2i=False)
    r1, _ = hinge_pairs_loop(x, y, 0.5, idx, idx, idx, idx, False, 2.0)
    torch.testing.assert_close(T1, r1)
    assert T2.abs().max() == 0


# ------------------------------------------------------------------------------------------
# The cosine folded in: rows of norms 1e-3 … 1e3, the scales applied to the score tiles
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("tiles", ["one", "several"])
@pytest.mark.parametrize("directions", list(DIRECTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_cosine_matches_float64_loop(monkeypatch, kind, directions, tiles, p):
    if tiles == "several":  # tiles of 5 rows (ragged last one); the radial correction row by row
        monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 5)
        monkeypatch.setattr(tiling, "TILE_ELEMENTS", 1)
    B, M = 17, 17 if kind != "labels" else 23
    case = lse_case(B, M, 6, kind, seed=21, spread=1e3)
    paired = kind == "paired"
    got = weighted(hinge_norm_pairs_chunked, *inputs(case), p, directions, paired=paired, cosine=True)
    ref = weighted(hinge_pairs_loop, *inputs(case), p, directions, cosine=True)
    assert_rows_close(got, ref, 1e-10)
    # the same rows as dot products are another loss: the scales are applied, not ignored
    dots = weighted(hinge_norm_pairs_chunked, *inputs(case), p, directions, paired=paired)
    assert not torch.allclose(dots[0] + dots[1], ref[0] + ref[1], rtol=1e-2)


@pytest.mark.parametrize("p", [1.0, 2.5])
@pytest.mark.parametrize("directions", list(DIRECTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_cosine_gradcheck(kind, directions, p):
    case = lse_case(9, 9 if kind != "labels" else 11, 4, kind, seed=22, spread=1e3)
    x, y, margin, rest = inputs(case)
    do = DIRECTIONS[directions]
    kw = dict(paired=kind == "paired", cosine=True)
    if case["self_ref"]:  # one tensor: x and y
        assert torch.autograd.gradcheck(
            lambda x_, m_: hinge_norm_pairs_chunked(x_, x_, m_, *rest, p, *do, **kw), (x, margin)
        )
    else:
        assert torch.autograd.gradcheck(
            lambda x_, y_, m_: hinge_norm_pairs_chunked(x_, y_, m_, *rest, p, *do, **kw), (x, y, margin)
        )


def test_cosine_zero_and_tiny_rows():
    # ‖row‖ ≤ ε: F.normalize divides by ε, a constant, so the row's gradient has no radial part
    case = lse_case(12, 15, 5, "labels", seed=23)
    case["x"][2] = 0
    case["y"][4] *= 1e-20
    got = weighted(hinge_norm_pairs_chunked, *inputs(case), 2.0, cosine=True)
    ref = weighted(hinge_pairs_loop, *inputs(case), 2.0, cosine=True)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert got[3][4].abs().max() > 1e9  # y's tiny row: ∝ 1/ε, as F.normalize's


@pytest.mark.parametrize("kind", ["paired", "labels"])
def test_cosine_of_half_inputs(kind):
    # float16 inputs: the scales and the tiles in float32, the gradients in float16
    case = lse_case(20, 20 if kind == "paired" else 26, 16, kind, seed=24, spread=4.0)
    x16, y16, margin, rest = inputs(case, torch.float16)
    T1, T2 = hinge_norm_pairs_chunked(x16, y16, margin, *rest, 1.0, paired=kind == "paired", cosine=True)
    assert T1.dtype == torch.float32
    (T1.sum() + T2.sum()).backward()
    assert x16.grad.dtype == torch.float16 and y16.grad.dtype == torch.float16
    x, y, m64, _ = inputs({**case, "x": x16.detach(), "y": y16.detach()})
    R1, R2 = hinge_pairs_loop(x, y, m64, *rest, 1.0, cosine=True)
    (R1.sum() + R2.sum()).backward()
    torch.testing.assert_close(T1.double(), R1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(T2.double(), R2, rtol=1e-5, atol=1e-5)
    for g, r in ((x16.grad, x.grad), (y16.grad, y.grad)):
        err = (g.double() - r).abs().amax(1)
        assert (err <= 2e-3 * r.abs().amax(1) + 1e-5).all()  # float16's rounding of the gradients


def test_one_margin_for_all_pairs():
    # a 0-dim margin tensor: its gradient sums over the pairs; a float margin: no gradient asked for
    case = lse_case(10, 13, 5, "labels", seed=25, spread=10.0)
    x, y, _, rest = inputs(case)
    m = torch.tensor(0.3, dtype=F64, requires_grad=True)
    got = weighted(hinge_norm_pairs_chunked, x, y, m, rest, 2.0)
    ref = weighted(hinge_pairs_loop, x, y, m, rest, 2.0)
    assert_rows_close(got, ref, 1e-10)
    T1, _ = hinge_norm_pairs_chunked(x, y, 0.3, *rest, 2.0)
    torch.testing.assert_close(T1, ref[0])
