"""The Triton both-direction hinge norms against the explicit float64 loop of their formula
(tests/support/reference.py): values and the gradients of x, y and the pairs' margins (the op
computes the thresholds ``s(a, p) − α`` itself), the diagonal pairs' one-pass kernels and the
per-direction kernels of any other pairs; dot products, and the cosine folded in (``cosine=True``:
the SCALED kernels, no normalised copies) on rows whose norms span 1e-3 … 1e3 (CPU: triton's
interpreter, small sizes)."""

import pytest
import torch

from tests.support.reference import hinge_pairs_loop, lse_case
from vse_losses.ops import hinge_norm_pairs, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("T1", "T2", "grad x", "grad y", "grad margin")


def triton_op(*args, **kw):
    return hinge_norm_pairs(*args, impl="triton", **kw)


def run(fn, case, p, dtype, do_i2t=True, do_t2i=True, weights_seed=7, **kw):
    """(T¹, T², ∂x, ∂y, ∂α) of ``Σ w¹T¹ + w²T²`` (random weights, signs mixed), α the pairs' margins;
    x and y are one tensor with self_ref (its gradient is then ∂x, and ∂y is None)."""
    self_ref = case["self_ref"]
    x = case["x"].to(dtype).to(DEVICE).requires_grad_()
    y = x if self_ref else case["y"].to(dtype).to(DEVICE).requires_grad_()
    margin = case["margin"].to(torch.float64 if dtype == torch.float64 else torch.float32).to(DEVICE)
    margin.requires_grad_()
    rest = [case[k].to(DEVICE) for k in ("a", "p_idx", "labels", "ref_labels")]
    T1, T2 = fn(x, y, margin, *rest, self_ref, p, do_i2t, do_t2i, **kw)
    g = torch.Generator().manual_seed(weights_seed)
    w1, w2 = (torch.randn(T1.shape[0], generator=g).to(T1.dtype).to(DEVICE) for _ in range(2))
    leaves = [x] + ([] if self_ref else [y]) + [margin]
    grads = list(torch.autograd.grad((T1 * w1).sum() + (T2 * w2).sum(), leaves))
    gx = grads.pop(0)
    gy = None if self_ref else grads.pop(0)
    return T1.detach(), T2.detach(), gx, gy, grads.pop(0)


def assert_rows_match(got, ref, rtol=1e-5, atol=1e-6):
    """Each row of ∂x, ∂y to ``rtol · max |ref row| + atol`` (the cosine's gradient of row i scales
    as 1/‖row i‖); the terms and ∂α (O(1)) to rtol, atol."""
    for name, g, r in zip(NAMES, got, ref):
        if r is None:
            assert g is None, name
            continue
        g, r = g.double(), r.double()
        if name in ("grad x", "grad y"):
            err = (g - r).abs().amax(1)
            allowed = rtol * r.abs().amax(1) + atol
            assert (err <= allowed).all(), f"{name}: rows {(err > allowed).nonzero().flatten().tolist()}"
        else:
            torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def diagonal_case(case, B, D, seed):
    """Pairs (j, j) of a batch of B rows with labels ``case`` (plain: arange; labels: random, so that
    same-label entries off the diagonal are not negatives; self_ref: y is x, (j, j) excluded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g) / D**0.5
    y = torch.randn(B, D, generator=g) / D**0.5
    labels = ref_labels = torch.arange(B)
    if case in ("labels", "self_ref"):
        labels = torch.randint(0, 6, (B,), generator=g)
        ref_labels = labels if case == "self_ref" else torch.randint(0, 6, (B,), generator=g)
    idx = torch.arange(B)
    margin = 0.3 * torch.randn(B, generator=g) + 0.1
    self_ref = case == "self_ref"
    return dict(
        x=x,
        y=x if self_ref else y,
        margin=margin,
        a=idx,
        p_idx=idx,
        labels=labels,
        ref_labels=ref_labels,
        self_ref=self_ref,
    )


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("case", ["plain", "labels", "self_ref", "one direction", "chunks"])
def test_diagonal_pairs_match_float64_loop(case, p, monkeypatch):
    if case == "chunks":  # weights in chunks of 16 rows, ragged last chunk
        from vse_losses.ops import triton_hinge_norm

        monkeypatch.setattr(triton_hinge_norm, "W_CHUNK_ELEMENTS", 16)
    c = diagonal_case(case, 37, 20, seed=3)
    do_t2i = case != "one direction"
    got = run(triton_op, c, p, torch.float32, do_t2i=do_t2i)
    ref = run(hinge_pairs_loop, c, p, torch.float64, do_t2i=do_t2i)
    assert_rows_match(got, ref, 1e-5, 1e-5)
    if not do_t2i:
        assert got[1].abs().max() == 0


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_pairs_of_labels_match_float64_loop(kind, p):
    # labels with duplicates on both sides (several pairs per row and per column), one modality
    case = lse_case(23, 23 if kind != "labels" else 30, 12, kind, seed=5)
    got = run(triton_op, case, p, torch.float32, paired=kind == "paired")
    ref = run(hinge_pairs_loop, case, p, torch.float64)
    assert_rows_match(got, ref, 1e-5, 1e-5)


def test_deterministic():
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(30, 16, generator=g).to(DEVICE) for _ in range(2))
    idx = torch.arange(30, device=DEVICE)
    runs = []
    for _ in range(2):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        T1, T2 = hinge_norm_pairs(xi, yi, 3.0, idx, idx, idx, idx, False, 2.0, impl="triton", cosine=True)
        (T1.sum() + 2 * T2.sum()).backward()
        runs.append((T1, T2, xi.grad, yi.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_zero_dimensional_embeddings():
    # D = 0: every score is 0, the thresholds −α; the labels make rows and columns differ
    x = torch.zeros(5, 0, device=DEVICE, requires_grad=True)
    y = torch.zeros(5, 0, device=DEVICE, requires_grad=True)
    margin = torch.tensor([0.5, -0.2, 1.0, 0.1, 0.0], device=DEVICE)
    labels = torch.tensor([0, 0, 1, 2, 3], device=DEVICE)
    ref_labels = torch.tensor([0, 1, 1, 2, 4], device=DEVICE)
    idx = torch.arange(5, device=DEVICE)
    T1, T2 = hinge_norm_pairs(x, y, margin, idx, idx, labels, ref_labels, False, 2.0, impl="triton")
    r1, r2 = hinge_pairs_loop(x.double(), y.double(), margin.double(), idx, idx, labels, ref_labels, False, 2.0)
    torch.testing.assert_close(T1.double(), r1)
    torch.testing.assert_close(T2.double(), r2)


# ------------------------------------------------------------------------------------------
# The cosine folded in: rows of norms 1e-3 … 1e3, the scales applied to the score tiles
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("B,M,D", [(16, 32, 16), (37, 29, 40)])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_cosine_matches_float64_loop(kind, B, M, D, p):
    if kind != "labels":
        M = B
    case = lse_case(B, M, D, kind, seed=B + M + 1, spread=1e3)
    got = run(triton_op, case, p, torch.float32, paired=kind == "paired", cosine=True)
    ref = run(hinge_pairs_loop, case, p, torch.float64, cosine=True)
    assert_rows_match(got, ref)
    # the same inputs as dot products are another loss: the scales are applied, not ignored
    dots = run(triton_op, case, p, torch.float32, paired=kind == "paired")
    assert not torch.allclose(dots[0].double() + dots[1].double(), ref[0] + ref[1], rtol=1e-2)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_cosine_one_direction(kind, direction):
    # t2i alone: the transposed problem's kernels, the scales swapped with x and y
    B, M = 21, 21 if kind != "labels" else 26
    case = lse_case(B, M, 12, kind, seed=4, spread=1e3)
    do = dict(do_i2t=direction == "i2t", do_t2i=direction == "t2i")
    got = run(triton_op, case, 2.0, torch.float32, paired=kind == "paired", cosine=True, **do)
    ref = run(hinge_pairs_loop, case, 2.0, torch.float64, cosine=True, **do)
    assert_rows_match(got, ref)
    assert got[1 if direction == "i2t" else 0].abs().max() == 0


@pytest.mark.parametrize("kind", ["paired", "labels"])
def test_cosine_of_diagonal_labels_and_self_ref(kind):
    # the diagonal pairs' kernels with labels (same-label entries masked) and with one modality
    # (y is x, the pair (j, j) itself excluded)
    c = diagonal_case("labels", 37, 20, seed=8)
    spread = torch.logspace(-3, 3, 37)[torch.randperm(37, generator=torch.Generator().manual_seed(0))]
    c["x"] = c["x"] * spread[:, None]
    c["y"] = c["y"] * spread.flip(0)[:, None]
    if kind == "paired":  # labels arange: the paired flag
        c["labels"] = c["ref_labels"] = torch.arange(37)
    got = run(triton_op, c, 1.0, torch.float32, paired=kind == "paired", cosine=True)
    ref = run(hinge_pairs_loop, c, 1.0, torch.float64, cosine=True)
    assert_rows_match(got, ref)
    one = {**c, "y": c["x"], "ref_labels": c["labels"], "self_ref": True}
    got = run(triton_op, one, 1.0, torch.float32, cosine=True)
    ref = run(hinge_pairs_loop, one, 1.0, torch.float64, cosine=True)
    assert_rows_match(got, ref)


@pytest.mark.parametrize("kind", ["paired", "labels"])
def test_cosine_backward_in_chunks_and_in_float16(kind, monkeypatch):
    # float16: the weights W̃ = c_x W c_y in chunks of 16 rows; rows of norms 1/4 … 4, which
    # float16 holds with room to spare
    from vse_losses.ops import triton_hinge_norm

    case = lse_case(37, 37 if kind == "paired" else 45, 16, kind, seed=9, spread=4.0)
    paired = kind == "paired"
    one_chunk = run(triton_op, case, 2.0, torch.float16, paired=paired, cosine=True)
    monkeypatch.setattr(triton_hinge_norm, "W_CHUNK_ELEMENTS", 16)
    chunks = run(triton_op, case, 2.0, torch.float16, paired=paired, cosine=True)
    assert_rows_match(chunks, one_chunk, rtol=2e-3, atol=1e-3)
    half = {**case, "x": case["x"].half(), "y": case["y"].half()}
    exact = run(hinge_pairs_loop, half, 2.0, torch.float64, cosine=True)
    assert_rows_match(chunks, exact, rtol=4e-3, atol=2e-3)


def test_cosine_zero_and_tiny_rows():
    # ‖row‖ ≤ ε: F.normalize divides by ε, a constant (no normalisation share in the gradient)
    for kind in ("paired", "labels"):
        case = lse_case(20, 20 if kind == "paired" else 24, 8, kind, seed=16)
        case["x"] = case["x"].clone()
        case["x"][3] = 0
        case["y"] = case["y"].clone()
        case["y"][5] *= 1e-20
        got = run(triton_op, case, 2.0, torch.float32, paired=kind == "paired", cosine=True)
        ref = run(hinge_pairs_loop, case, 2.0, torch.float64, cosine=True)
        assert_rows_match(got, ref)
