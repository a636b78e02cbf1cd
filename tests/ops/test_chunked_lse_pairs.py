"""The chunked torch ``lse_pairs`` with the cosine folded in (``cosine=True``: the scales applied to
the score tiles and the pairs' scores, no normalised copies) against the explicit float64 loop of
its formula on F.normalize'd rows, and by gradcheck: values and the gradients of x, y, the margins
(the thresholds' gradient, negated) and a tensor temperature, on rows whose norms span 1e-3 … 1e3.
(The dot product is checked against the same loop as the Triton op's reference,
tests/ops/test_triton_lse_pairs.py.)"""

import pytest
import torch

from tests.support.reference import lse_case, lse_pairs_loop
from vse_losses.ops import tiling
from vse_losses.ops.chunked_lse_pairs import lse_pairs_chunked

F64 = torch.float64
KINDS = ["paired", "labels", "self_ref"]
DIRECTIONS = {"both": (True, True), "i2t": (True, False), "t2i": (False, True)}


def inputs(case):
    """float64 leaves (self_ref: y is x) and the call's other arguments."""
    x = case["x"].to(F64).requires_grad_()
    y = x if case["self_ref"] else case["y"].to(F64).requires_grad_()
    margin = case["margin"].to(F64).requires_grad_()
    tau = torch.tensor(0.2, dtype=F64, requires_grad=True)
    rest = tuple(case[k] for k in ("a", "p_idx", "labels", "ref_labels", "self_ref"))
    return x, y, margin, tau, rest


def weighted(fn, x, y, margin, tau, rest, directions, **kw):
    """Σ w¹L¹ + w²L² (random weights of both signs) of ``fn``, and its gradients."""
    L1, L2 = fn(x, y, margin, tau, *rest, *DIRECTIONS[directions], **kw)
    g = torch.Generator().manual_seed(3)
    w1, w2 = (torch.randn(L1.shape[0], generator=g, dtype=F64) for _ in range(2))
    total = (L1 * w1).sum() + (L2 * w2).sum()
    leaves = [x] + ([] if y is x else [y]) + [margin, tau]
    return [L1.detach(), L2.detach(), *torch.autograd.grad(total, leaves)]


@pytest.mark.parametrize("tiles", ["one", "several"])
@pytest.mark.parametrize("directions", list(DIRECTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_cosine_matches_float64_loop(monkeypatch, kind, directions, tiles):
    if tiles == "several":  # tiles of 5 rows (ragged last one); the radial correction row by row
        monkeypatch.setattr(tiling, "MIN_TILE_ROWS", 5)
        monkeypatch.setattr(tiling, "TILE_ELEMENTS", 1)
    B, M = 17, 17 if kind != "labels" else 23
    case = lse_case(B, M, 6, kind, seed=21, spread=1e3)
    x, y, margin, tau, rest = inputs(case)
    paired = kind == "paired"
    got = weighted(lse_pairs_chunked, x, y, margin, tau, rest, directions, paired=paired, cosine=True)
    ref = weighted(lse_pairs_loop, x, y, margin, tau, rest, directions, cosine=True)
    for name, g, r in zip(("L1", "L2", "grad x", "grad y | margin", "grad margin | tau", "grad tau"), got, ref):
        # float64: the rows' gradients (∝ 1/‖row‖) to 1e-10 of their own size
        scale = r.abs().amax(-1, keepdim=True) if r.dim() == 2 else r.abs().max()
        assert ((g - r).abs() <= 1e-10 * scale + 1e-13).all(), name


@pytest.mark.parametrize("directions", list(DIRECTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_cosine_gradcheck(kind, directions):
    case = lse_case(9, 9 if kind != "labels" else 11, 4, kind, seed=22, spread=1e3)
    x, y, margin, tau, rest = inputs(case)
    paired = kind == "paired"
    do = DIRECTIONS[directions]

    if case["self_ref"]:  # one tensor: x and y

        def fn(x_, m_, tau_):
            return lse_pairs_chunked(x_, x_, m_, tau_, *rest, *do, paired=paired, cosine=True)

        assert torch.autograd.gradcheck(fn, (x, margin, tau))
    else:

        def fn(x_, y_, m_, tau_):
            return lse_pairs_chunked(x_, y_, m_, tau_, *rest, *do, paired=paired, cosine=True)

        assert torch.autograd.gradcheck(fn, (x, y, margin, tau))


def test_cosine_zero_and_tiny_rows():
    # ‖row‖ ≤ ε: F.normalize divides by ε, a constant, so the row's gradient has no radial part
    case = lse_case(12, 15, 5, "labels", seed=23)
    case["x"][2] = 0
    case["y"][4] *= 1e-20
    x, y, margin, tau, rest = inputs(case)
    got = weighted(lse_pairs_chunked, x, y, margin, tau, rest, "both", cosine=True)
    ref = weighted(lse_pairs_loop, x, y, margin, tau, rest, "both", cosine=True)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert got[3][4].abs().max() > 1e9  # y's tiny row: ∝ 1/ε, as F.normalize's


def test_cosine_of_half_inputs():
    # float16 inputs: the scales and the tiles in float32, the gradients in float16
    case = lse_case(20, 20, 16, "paired", seed=24, spread=4.0)
    x16 = case["x"].half().requires_grad_()
    y16 = case["y"].half().requires_grad_()
    margin, tau = case["margin"], torch.tensor(0.1)
    rest = tuple(case[k] for k in ("a", "p_idx", "labels", "ref_labels", "self_ref"))
    L1, L2 = lse_pairs_chunked(x16, y16, margin, tau, *rest, paired=True, cosine=True)
    assert L1.dtype == torch.float32
    (L1.sum() + L2.sum()).backward()
    assert x16.grad.dtype == torch.float16 and y16.grad.dtype == torch.float16
    x, y = x16.detach().double().requires_grad_(), y16.detach().double().requires_grad_()
    R1, R2 = lse_pairs_loop(x, y, margin.double(), 0.1, *rest, cosine=True)
    (R1.sum() + R2.sum()).backward()
    torch.testing.assert_close(L1.double(), R1, rtol=1e-5, atol=1e-5)
    for g, r in ((x16.grad, x.grad), (y16.grad, y.grad)):
        err = (g.double() - r).abs().amax(1)
        assert (err <= 2e-3 * r.abs().amax(1) + 1e-5).all()  # float16's rounding of the gradients
