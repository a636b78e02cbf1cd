"""The Triton ``lse_pairs`` (the temperature losses' one operation) against an explicit float64 loop
of its formula and against the chunked torch op: values and the gradients of x, y, the thresholds
and a tensor temperature (CPU: triton's interpreter, 16×16 tiles, small sizes)."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from tests.support.reference import lse_case as make_case
from tests.support.reference import lse_pairs_loop
from tests.support.tolerance import assert_as_close_as_torch, half_rtol
from vse_losses import functional as VF
from vse_losses.ops import triton_available
from vse_losses.ops.chunked_lse_pairs import lse_pairs_chunked

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run(fn, case, tau, dtype, do_i2t=True, do_t2i=True, paired=False, weights_seed=7, cosine=False, **kw):
    """(L¹, L², ∂x, ∂y, ∂α, ∂τ) of ``Σ w¹L¹ + w²L²`` (random weights, signs mixed), α the pairs'
    margins (∂α = −∂t, the thresholds' gradient); ∂τ None for a float τ. x and y are one tensor
    with self_ref (its gradient is then ∂x, and ∂y is None).
    ``cosine``: the scores of the normalised rows (the ops' flag; the loop normalises)."""
    self_ref = case["self_ref"]
    x = case["x"].to(dtype).to(DEVICE).requires_grad_()
    y = x if self_ref else case["y"].to(dtype).to(DEVICE).requires_grad_()
    margin = case["margin"].to(torch.float32 if dtype != torch.float64 else dtype).to(DEVICE).requires_grad_()
    tau_in = tau
    if torch.is_tensor(tau):
        tau_in = tau.to(margin.dtype).to(DEVICE).requires_grad_()
    a, p_idx, labels, ref_labels = (case[k].to(DEVICE) for k in ("a", "p_idx", "labels", "ref_labels"))
    if fn is lse_pairs_loop:
        L1, L2 = fn(x, y, margin, tau_in, a, p_idx, labels, ref_labels, self_ref, do_i2t, do_t2i, cosine=cosine)
    else:
        L1, L2 = fn(
            x, y, margin, tau_in, a, p_idx, labels, ref_labels, self_ref, do_i2t, do_t2i, paired, cosine=cosine, **kw
        )
    g = torch.Generator().manual_seed(weights_seed)
    w1, w2 = (torch.randn(a.shape[0], generator=g).to(L1.dtype).to(DEVICE) for _ in range(2))
    inputs = [x] + ([] if self_ref else [y]) + [margin] + ([tau_in] if torch.is_tensor(tau_in) else [])
    grads = list(torch.autograd.grad((L1 * w1).sum() + (L2 * w2).sum(), inputs))
    gx = grads.pop(0)
    gy = None if self_ref else grads.pop(0)
    gm = grads.pop(0)
    gtau = grads.pop(0) if grads else None
    return L1.detach(), L2.detach(), gx, gy, gm, gtau


def triton_op(*args, **kw):
    from vse_losses.ops.triton_lse_pairs import lse_pairs_triton

    return lse_pairs_triton(*args, **kw)


NAMES = ("L1", "L2", "grad x", "grad y", "grad margin", "grad tau")


def assert_matches(got, ref, rtol=1e-5, atol=1e-5):
    for name, g, r in zip(NAMES, got, ref):
        if r is None:
            assert g is None, name
            continue
        torch.testing.assert_close(g.double(), r.double(), rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


# (B, M): one tile, tile edges (16, 32), ragged sizes over several tiles; D ragged and a K-tile multiple
SHAPES = [(5, 7, 3), (16, 32, 16), (33, 17, 20), (37, 37, 40)]


@pytest.mark.parametrize("B,M,D", SHAPES)
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_matches_float64_loop(kind, B, M, D):
    if kind != "labels":
        M = B
    case = make_case(B, M, D, kind, seed=B + M)
    paired = kind == "paired"
    tau = torch.tensor(0.2)  # a tensor temperature: its gradient too
    got = run(triton_op, case, tau, torch.float32, paired=paired)
    ref = run(lse_pairs_loop, case, tau, torch.float64)
    assert_matches(got, ref)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_one_direction(kind, direction):
    B, M = 21, 21 if kind != "labels" else 26
    case = make_case(B, M, 12, kind, seed=3)
    do = dict(do_i2t=direction == "i2t", do_t2i=direction == "t2i")
    got = run(triton_op, case, 0.5, torch.float32, paired=kind == "paired", **do)
    ref = run(lse_pairs_loop, case, 0.5, torch.float64, **do)
    assert_matches(got, ref)
    assert got[1 if direction == "i2t" else 0].abs().max() == 0


@pytest.mark.parametrize("tau", [1.0, 0.05, 0.01, 1e-4])
def test_temperatures_and_margins_match_the_chunked_op(tau):
    # the chunked torch op in float64 is the reference where the loop's exp overflows (τ = 1e-4): the
    # float32 inputs, exactly. Each float32 op computes its thresholds s(a, p) − α itself, whose
    # rounding shifts every weight by Δt/τ: each tensor is held to 1e-5 of its largest entry
    case = make_case(35, 50, 24, "labels", seed=5, n_labels=4)
    case["margin"] = case["margin"] + torch.linspace(-0.5, 1.0, case["margin"].shape[0])  # margins of both signs
    for tau_value in (tau, torch.tensor(tau)):
        ref = run(lse_pairs_chunked, case, tau_value, torch.float64)
        for op in (triton_op, lse_pairs_chunked):
            for name, g, r in zip(NAMES, run(op, case, tau_value, torch.float32), ref):
                if r is not None:
                    assert (g.double() - r).abs().max() <= 1e-5 * r.abs().max(), name


def test_program_grids():
    # rows spread over several column groups (row partials merged), columns over row groups, and
    # programs that own several row blocks and column tiles (5 × 4 tiles of 16)
    case = make_case(70, 55, 10, "labels", seed=8)
    ref = run(lse_pairs_loop, case, 0.3, torch.float64)
    for groups in [(1, 1), (2, 3), (3, 1), (1, 4), (5, 4)]:
        got = run(triton_op, case, 0.3, torch.float32, _groups=groups)
        assert_matches(got, ref)


def test_backward_in_chunks_and_in_two_passes(monkeypatch):
    # weights in chunks of 16 rows (ragged last chunk); float16 with no room for the float32 ∂y
    # accumulator: ∂y from a second pass over column chunks, as it is at B = 65,536
    from vse_losses.ops import triton_lse_pairs

    case = make_case(37, 45, 16, "labels", seed=9)
    tau = torch.tensor(0.25)
    one_pass = run(triton_op, case, tau, torch.float16)
    monkeypatch.setattr(triton_lse_pairs, "W_CHUNK_ELEMENTS", 16)
    chunked = run(triton_op, case, tau, torch.float16)
    monkeypatch.setattr(triton_lse_pairs, "ACC_BYTES", 0)
    two_pass = run(triton_op, case, tau, torch.float16)
    for got in (chunked, two_pass):
        # the same weights; ∂y summed in another order, then rounded to float16
        assert_matches(got, one_pass, rtol=2e-3, atol=1e-3)
    exact = run(lse_pairs_loop, {**case, "x": case["x"].half(), "y": case["y"].half()}, tau, torch.float64)
    for name, g, e in zip(NAMES, two_pass, exact):
        torch.testing.assert_close(g.double(), e, rtol=4e-3, atol=2e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_float16_by_the_tolerance_rule():
    # torch's own float16 computation of the formula (S in float16, the log-sum-exp of its entries)
    # is the measuring stick; the kernel accumulates in float32
    case = make_case(40, 40, 32, "paired", seed=11)
    x16, y16 = case["x"].half(), case["y"].half()
    case16 = {**case, "x": x16, "y": y16, "margin": torch.full_like(case["margin"], 0.2)}
    tau = torch.tensor(0.1)

    def dense(x, y, margin, tau, a, p_idx, labels, ref_labels, self_ref, do_i2t, do_t2i, paired, cosine):
        S = x @ y.t()
        t = S[a, p_idx] - margin.to(S.dtype)
        neg = labels[:, None] != ref_labels[None, :]
        inf = torch.tensor(float("-inf"), dtype=S.dtype)
        zero = torch.zeros((len(a), 1), dtype=S.dtype)
        z1 = torch.where(neg[a], (S[a] - t[:, None].to(S.dtype)) / tau.to(S.dtype), inf)
        z2 = torch.where(neg[:, p_idx].t(), (S[:, p_idx].t() - t[:, None].to(S.dtype)) / tau.to(S.dtype), inf)
        return torch.logsumexp(torch.cat([zero, z1], 1), 1), torch.logsumexp(torch.cat([zero, z2], 1), 1)

    got = run(triton_op, case16, tau, torch.float16, paired=True)
    exact = run(lse_pairs_loop, {**case16, "x": x16.double(), "y": y16.double()}, tau, torch.float64)
    torch16 = run(dense, case16, tau, torch.float16)
    for name, g, e, b in zip(NAMES, got, exact, torch16):
        assert_as_close_as_torch(g, e, b, atol=1e-5, rtol=2 * half_rtol(torch.float16), what=name)


# ------------------------------------------------------------------------------------------
# The cosine folded in: rows of norms 1e-3 … 1e3, the scales applied to the score tiles
# ------------------------------------------------------------------------------------------


def assert_rows_match(got, ref, rtol=1e-5, atol=1e-6):
    """The tolerance rule of the cosine: the normalisation scales row i's gradient by 1/‖row i‖
    (here 1e-3 … 1e3), and float32 errs relative to that scale, so each row of ∂x, ∂y is held to
    ``rtol · max |ref row| + atol``; the terms and the gradients of t and τ (O(1)) as
    :func:`assert_matches`."""
    for name, g, r in zip(NAMES, got, ref):
        if r is None:
            assert g is None, name
            continue
        g, r = g.double(), r.double()
        if name in ("grad x", "grad y"):
            err = (g - r).abs().amax(1)
            allowed = rtol * r.abs().amax(1) + atol
            assert (err <= allowed).all(), (
                f"{name}: rows {(err > allowed).nonzero().flatten().tolist()}: {err / allowed}"
            )
        else:
            torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("B,M,D", [(16, 32, 16), (37, 29, 40)])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_cosine_matches_float64_loop(kind, B, M, D):
    if kind != "labels":
        M = B
    case = make_case(B, M, D, kind, seed=B + M + 1, spread=1e3)
    tau = torch.tensor(0.1)
    got = run(triton_op, case, tau, torch.float32, paired=kind == "paired", cosine=True)
    ref = run(lse_pairs_loop, case, tau, torch.float64, cosine=True)
    assert_rows_match(got, ref)
    # the same inputs as dot products are another loss: the scales are applied, not ignored
    L1_dot = run(triton_op, case, tau, torch.float32, paired=kind == "paired")[0]
    assert not torch.allclose(L1_dot.double(), ref[0], rtol=1e-2)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("kind", ["paired", "labels", "self_ref"])
def test_cosine_one_direction(kind, direction):
    # t2i alone is the transposed problem: the scales swap sides with x and y
    B, M = 21, 21 if kind != "labels" else 26
    case = make_case(B, M, 12, kind, seed=4, spread=1e3)
    do = dict(do_i2t=direction == "i2t", do_t2i=direction == "t2i")
    got = run(triton_op, case, 0.2, torch.float32, paired=kind == "paired", cosine=True, **do)
    ref = run(lse_pairs_loop, case, 0.2, torch.float64, cosine=True, **do)
    assert_rows_match(got, ref)


def test_cosine_margins_and_program_grids():
    # a low temperature, margins of both signs, the forward's partials merged over program grids;
    # the chunked op in float32 beside it. float32 errs as 1/τ here (as the dot product's tests)
    case = make_case(70, 55, 10, "labels", seed=15, spread=1e3)
    case["margin"] = case["margin"] + torch.linspace(-0.5, 1.0, case["margin"].shape[0])
    tau = torch.tensor(0.05)
    ref = run(lse_pairs_loop, case, tau, torch.float64, cosine=True)
    tol = dict(rtol=2e-6 / tau.item(), atol=1e-5 / tau.item())
    assert_rows_match(run(lse_pairs_chunked, case, tau, torch.float32, cosine=True), ref, **tol)
    for groups in [(1, 1), (3, 1), (5, 4)]:
        assert_rows_match(run(triton_op, case, tau, torch.float32, cosine=True, _groups=groups), ref, **tol)


def test_cosine_backward_in_chunks_and_in_two_passes(monkeypatch):
    # float16: the weights W̃ = c_x W c_y in chunks of 16 rows and ∂y from the second pass (the
    # scales swapped there); rows of norms 1/4 … 4, which float16 holds with room to spare
    from vse_losses.ops import triton_lse_pairs

    case = make_case(37, 45, 16, "labels", seed=9, spread=4.0)
    tau = torch.tensor(0.25)
    one_pass = run(triton_op, case, tau, torch.float16, cosine=True)
    monkeypatch.setattr(triton_lse_pairs, "W_CHUNK_ELEMENTS", 16)
    chunked = run(triton_op, case, tau, torch.float16, cosine=True)
    monkeypatch.setattr(triton_lse_pairs, "ACC_BYTES", 0)
    two_pass = run(triton_op, case, tau, torch.float16, cosine=True)
    for got in (chunked, two_pass):
        assert_rows_match(got, one_pass, rtol=2e-3, atol=1e-3)
    exact = run(lse_pairs_loop, {**case, "x": case["x"].half(), "y": case["y"].half()}, tau, torch.float64, cosine=True)
    assert_rows_match(two_pass, exact, rtol=4e-3, atol=2e-3)


def test_cosine_float16_by_the_tolerance_rule():
    # torch's float16 computation of the formula on F.normalize'd float16 rows is the measuring stick
    case = make_case(40, 40, 32, "paired", seed=11, spread=4.0)
    x16, y16 = case["x"].half(), case["y"].half()
    case16 = {**case, "x": x16, "y": y16, "margin": torch.full_like(case["margin"], 0.2)}
    tau = torch.tensor(0.1)

    def dense(x, y, margin, tau, a, p_idx, labels, ref_labels, self_ref, do_i2t, do_t2i, paired, cosine):
        S = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
        t = S[a, p_idx] - margin.to(S.dtype)
        neg = labels[:, None] != ref_labels[None, :]
        inf = torch.tensor(float("-inf"), dtype=S.dtype)
        zero = torch.zeros((len(a), 1), dtype=S.dtype)
        z1 = torch.where(neg[a], (S[a] - t[:, None].to(S.dtype)) / tau.to(S.dtype), inf)
        z2 = torch.where(neg[:, p_idx].t(), (S[:, p_idx].t() - t[:, None].to(S.dtype)) / tau.to(S.dtype), inf)
        return torch.logsumexp(torch.cat([zero, z1], 1), 1), torch.logsumexp(torch.cat([zero, z2], 1), 1)

    got = run(triton_op, case16, tau, torch.float16, paired=True, cosine=True)
    exact = run(lse_pairs_loop, {**case16, "x": x16.double(), "y": y16.double()}, tau, torch.float64, cosine=True)
    torch16 = run(dense, case16, tau, torch.float16, cosine=True)
    for name, g, e, b in zip(NAMES, got, exact, torch16):
        assert_as_close_as_torch(g, e, b, atol=1e-5, rtol=2 * half_rtol(torch.float16), what=name)


def test_cosine_zero_and_tiny_rows():
    # ‖row‖ ≤ ε: F.normalize divides by ε, a constant (no normalisation share in the gradient)
    case = make_case(20, 20, 8, "paired", seed=16)
    case["x"] = case["x"].clone()
    case["x"][3] = 0
    case["y"] = case["y"].clone()
    case["y"][5] *= 1e-20
    tau = torch.tensor(0.5)
    got = run(triton_op, case, tau, torch.float32, paired=True, cosine=True)
    ref = run(lse_pairs_loop, case, tau, torch.float64, cosine=True)
    assert_rows_match(got, ref)


def test_rows_without_negatives_and_no_pairs():
    # label 0 holds every column: its rows have no negative (L¹ = 0, no gradient through them)
    x, y = torch.randn(6, 4), torch.randn(3, 4)
    labels, ref_labels = torch.tensor([0, 0, 1, 1, 0, 2]), torch.tensor([0, 1, 2])
    case = dict(x=x, y=y, labels=labels, ref_labels=ref_labels, self_ref=False)
    same = labels[:, None] == ref_labels[None, :]
    case["a"], case["p_idx"] = same.nonzero(as_tuple=True)
    case["margin"] = torch.zeros(case["a"].shape[0])
    got = run(triton_op, case, torch.tensor(0.5), torch.float32)
    assert_matches(got, run(lse_pairs_loop, case, torch.tensor(0.5), torch.float64))
    # all labels equal: no negatives anywhere
    case_all = {**case, "labels": torch.zeros(6, dtype=torch.long), "ref_labels": torch.zeros(3, dtype=torch.long)}
    case_all["a"], case_all["p_idx"] = torch.ones(6, 3).nonzero(as_tuple=True)
    case_all["margin"] = torch.zeros(18)
    L1, L2, gx, gy, gt, gtau = run(triton_op, case_all, torch.tensor(0.5), torch.float32)
    for v in (L1, L2, gx, gy, gt, gtau):
        assert v.abs().max() == 0
    # no positive pair at all
    empty = {**case, "a": torch.zeros(0, dtype=torch.long), "p_idx": torch.zeros(0, dtype=torch.long)}
    empty["margin"] = torch.zeros(0)
    L1, L2, gx, gy, gt, gtau = run(triton_op, empty, torch.tensor(0.5), torch.float32)
    assert L1.shape == L2.shape == (0,) and gx.abs().max() == 0 and gy.abs().max() == 0 and gtau == 0


def test_deterministic():
    case = make_case(30, 30, 16, "labels", seed=12)
    first, second = (run(triton_op, case, torch.tensor(0.1), torch.float32) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# The losses end to end
# ------------------------------------------------------------------------------------------


def clip_terms_loop(x, y, labels, ref_labels, tau, margin, scale):
    """The loss's sum of terms, an explicit loop in float64: scale·log(1 + Σ exp((α − s_ap + s_n)/τ))
    per positive pair and direction, cosine scores."""
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    total = 0
    for i in range(len(x)):
        for k in range(len(y)):
            if labels[i] != ref_labels[k]:
                continue
            s = x[i] @ y[k]
            for negs in (
                [x[i] @ y[n] for n in range(len(y)) if ref_labels[n] != labels[i]],
                [x[n] @ y[k] for n in range(len(x)) if labels[n] != ref_labels[k]],
            ):
                total = total + scale * torch.log(1 + sum((torch.exp((margin - s + v) / tau) for v in negs), 0 * s))
    return total


@pytest.mark.parametrize("name", ["LogSumExpViolationLoss", "InfoNCELoss"])
def test_losses_with_a_learned_temperature(name):
    # CLIP's learned 1/τ through impl="triton": value and the gradients of x, y and log(1/τ)
    g = torch.Generator().manual_seed(13)
    x0, y0 = torch.randn(19, 8, generator=g), torch.randn(23, 8, generator=g)
    labels, ref_labels = torch.randint(0, 7, (19,), generator=g), torch.randint(0, 7, (23,), generator=g)
    margin = 0.2 if name == "LogSumExpViolationLoss" else 0.1
    results = []
    for dtype in (torch.float32, torch.float64):
        x, y = x0.to(dtype).requires_grad_(), y0.to(dtype).requires_grad_()
        logit_scale = torch.tensor(math.log(1 / 0.07), dtype=dtype, requires_grad=True)
        tau = 1 / logit_scale.exp()
        if dtype == torch.float32:
            loss_fn = getattr(vse_losses, name)(temperature=tau, margin=margin, impl="triton", reducer=SumReducer())
            value = loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels)
        else:
            scale = tau if name == "LogSumExpViolationLoss" else 1.0
            value = clip_terms_loop(x, y, labels, ref_labels, tau, margin, scale)
        results.append([value, *torch.autograd.grad(value, (x, y, logit_scale))])
    for what, got, ref in zip(("loss", "grad x", "grad y", "grad log 1/τ"), *results):
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=2e-5, msg=lambda m, w=what: f"{w}: {m}")


@pytest.mark.parametrize("directions", ["both", "i2t", "t2i"])
def test_info_nce_one_modality_and_directions(directions):
    # self_ref: a sample's pair with itself is neither positive nor negative
    g = torch.Generator().manual_seed(14)
    emb = torch.randn(26, 10, generator=g)
    labels = torch.randint(0, 6, (26,), generator=g)
    kw = dict(labels=labels, temperature=0.1, directions=directions, reduction="none")
    results = []
    for impl, dtype in (("triton", torch.float32), ("dense", torch.float64)):
        e = emb.to(dtype).requires_grad_()
        terms = VF.info_nce_loss(e, **kw, impl=impl)
        w = torch.linspace(-1, 2, terms.shape[0], dtype=dtype)
        results.append((terms, *torch.autograd.grad((terms * w).sum(), e)))
    for got, ref in zip(*results):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
