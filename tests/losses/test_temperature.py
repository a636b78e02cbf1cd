"""The temperature axis: LogSumExpViolationLoss and InfoNCELoss against CLIP's formula, the MH bounds,
the temperature's gradient and its checks. (The explicit-loop equations, labels, directions,
reducers, distributed and dtypes run for both losses with the others, through LOSS_CASES.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from vse_losses import functional as VF
from vse_losses.ops import triton_available

IMPLS = ["dense", "chunked"] + (["triton"] if triton_available() else [])
F64 = dict(dtype=torch.float64)


def clip_loss(img, cap, tau):
    """CLIP's symmetric loss, ½(CE(S/τ, arange) + CE(Sᵀ/τ, arange)), S the cosine matrix."""
    S = F.normalize(img, dim=1) @ F.normalize(cap, dim=1).t()
    target = torch.arange(S.shape[0])
    return 0.5 * (F.cross_entropy(S / tau, target) + F.cross_entropy(S.t() / tau, target))


@pytest.mark.parametrize("impl", IMPLS)
def test_info_nce_paired_is_clip(impl):
    dtype = torch.float32 if impl == "triton" else torch.float64
    x, y = torch.randn(23, 12, dtype=dtype), torch.randn(23, 12, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    expected = clip_loss(x.double(), y.double(), 0.07)
    torch.testing.assert_close(vse_losses.InfoNCELoss(impl=impl)(x, y).double(), expected, **tol)
    torch.testing.assert_close(VF.info_nce_loss(x, y, temperature=0.07, impl=impl).double(), expected, **tol)


def test_info_nce_is_lse_over_tau_at_any_margin():
    x, y = torch.randn(9, 6, **F64), torch.randn(9, 6, **F64)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5])
    for margin in (0.0, 0.3):
        lse = VF.log_sum_exp_violation_loss(x, y, labels=labels, temperature=0.2, margin=margin, reduction="none")
        nce = VF.info_nce_loss(x, y, labels=labels, temperature=0.2, margin=margin, reduction="none")
        torch.testing.assert_close(lse / 0.2, nce, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("tau", [1.0, 0.1, 1e-4])
def test_lse_between_mh_and_mh_plus_tau_log(impl, tau):
    # per term: MH ≤ τ·log(1 + Σ exp(v/τ)) ≤ MH + τ·log(1 + #negatives); τ → 0 is MH
    x, y = torch.randn(12, 5, **F64), torch.randn(16, 5, **F64)
    labels, ref_labels = torch.randint(0, 6, (12,)), torch.randint(0, 6, (16,))
    kw = dict(labels=labels, ref_labels=ref_labels, margin=0.2, reduction="none", impl=impl)
    lse = VF.log_sum_exp_violation_loss(x, y, temperature=tau, **kw)
    mh = VF.max_violation_loss(x, y, **kw)
    neg = labels[:, None] != ref_labels[None, :]
    a, p = (labels[:, None] == ref_labels[None, :]).nonzero(as_tuple=True)
    n_neg = torch.cat([neg[a].sum(1), neg[:, p].sum(0)]).double()
    assert (lse >= mh - 1e-12).all()
    assert (lse <= mh + tau * torch.log1p(n_neg) + 1e-12).all()
    if tau == 1e-4:
        assert (lse - mh).abs().max() <= 1e-4 * math.log(17)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("name", ["log_sum_exp_violation_loss", "info_nce_loss"])
def test_learned_temperature_gradient_is_exact(impl, name):
    # CLIP learns 1/τ: a tensor temperature gets the float64 gradient of the explicit formula
    x, y = torch.randn(10, 4, **F64, requires_grad=True), torch.randn(10, 4, **F64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6, 7])
    logit_scale = torch.tensor(math.log(1 / 0.07), **F64, requires_grad=True)
    fn = getattr(VF, name)

    def loss(a, b, s):
        return fn(a, b, labels=labels, temperature=1 / s.exp(), impl=impl, reduction="sum")

    assert torch.autograd.gradcheck(loss, (x, y, logit_scale))
    # the same gradient as the explicit formula's autograd
    (g,) = torch.autograd.grad(loss(x, y, logit_scale), logit_scale)
    tau = 1 / logit_scale.exp()
    S = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
    margin = 0.2 if name == "log_sum_exp_violation_loss" else 0.0
    scale = tau if name == "log_sum_exp_violation_loss" else 1.0
    total = 0
    for i, j in (labels[:, None] == labels[None, :]).nonzero().tolist():
        negs_row = [S[i, n] for n in range(10) if labels[n] != labels[i]]
        negs_col = [S[n, j] for n in range(10) if labels[n] != labels[j]]
        for negs in (negs_row, negs_col):
            total = total + scale * torch.log(1 + sum(torch.exp((margin - S[i, j] + s) / tau) for s in negs))
    (expected,) = torch.autograd.grad(total, logit_scale)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_temperature_can_change_between_calls():
    x, y = torch.randn(8, 4, **F64), torch.randn(8, 4, **F64)
    loss_fn = vse_losses.InfoNCELoss(temperature=0.5, reducer=SumReducer())
    first = loss_fn(x, y)
    tau = torch.tensor(0.1, **F64, requires_grad=True)
    loss_fn.temperature = tau
    second = loss_fn(x, y)
    torch.testing.assert_close(second, VF.info_nce_loss(x, y, temperature=0.1, reduction="sum"))
    assert not torch.allclose(first, second)
    (g,) = torch.autograd.grad(second, tau)
    assert torch.isfinite(g) and g != 0


@pytest.mark.parametrize(
    "bad",
    [
        0.0,
        -0.1,
        float("nan"),
        float("inf"),
        True,
        "0.07",
        torch.tensor([0.07]),
        torch.tensor(0),
        torch.tensor(-1.0),
        torch.tensor(float("nan")),
    ],
)
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        vse_losses.InfoNCELoss(temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        vse_losses.LogSumExpViolationLoss(temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        VF.info_nce_loss(torch.randn(3, 2), torch.randn(3, 2), temperature=bad)
    loss_fn = vse_losses.LogSumExpViolationLoss()
    with pytest.raises(ValueError, match="temperature"):
        loss_fn.temperature = bad


def test_labels_every_positive_pair_is_a_term():
    # two captions of image 0: both are terms, and neither is the other's negative
    x, y = torch.randn(3, 4, **F64), torch.randn(4, 4, **F64)
    labels, ref_labels = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 2])
    terms = VF.info_nce_loss(x, y, labels=labels, ref_labels=ref_labels, temperature=0.1, reduction="none")
    assert terms.shape == (8,)  # 4 positive pairs × 2 directions
    S = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
    # i2t term of (0, caption 0): caption 1 (also image 0's) is left out of the negatives
    expected = torch.log(1 + torch.exp((S[0, 2] - S[0, 0]) / 0.1) + torch.exp((S[0, 3] - S[0, 0]) / 0.1))
    torch.testing.assert_close(terms[0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "dense"])
@pytest.mark.parametrize("form", ["paired", "labels", "self_ref", "i2t"])
@pytest.mark.parametrize("name", ["LogSumExpViolationLoss", "InfoNCELoss"])
def test_cosine_folded_into_the_kernels_matches_dense(name, form, impl):
    # chunked and triton fold the cosine into their score tiles (no normalised copies of x and y);
    # dense normalises first. Unnormalised rows, norms 1e-3 … 1e3: the loss and the gradients of
    # x, y and a learned temperature agree. Triton runs in float32 (each row's gradient, ∝ 1/‖row‖,
    # to 2e-5 of its own size), chunked in float64 (1e-10).
    dtype = torch.float32 if impl == "triton" else torch.float64
    g = torch.Generator().manual_seed(31)
    B, M = 19, 19 if form != "labels" else 24
    x0 = torch.randn(B, 8, generator=g, **F64) * torch.logspace(-3, 3, B, **F64)[torch.randperm(B, generator=g), None]
    y0 = torch.randn(M, 8, generator=g, **F64) * torch.logspace(3, -3, M, **F64)[:, None]
    labels = torch.randint(0, 6, (B,), generator=g)
    ref_labels = torch.randint(0, 6, (M,), generator=g)
    results = []
    for run_impl, run_dtype in ((impl, dtype), ("dense", torch.float64)):
        x = x0.to(run_dtype).requires_grad_()
        y = y0.to(run_dtype).requires_grad_()
        tau = torch.tensor(0.1, dtype=run_dtype, requires_grad=True)
        kw = dict(temperature=tau, impl=run_impl, reducer=SumReducer())
        loss_fn = getattr(vse_losses, name)(**kw, directions="i2t" if form == "i2t" else "both")
        if form in ("paired", "i2t"):
            value, leaves = loss_fn(x, y), (x, y, tau)
        elif form == "labels":
            value, leaves = loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels), (x, y, tau)
        else:  # one modality: the labels' pairs within x
            value, leaves = loss_fn(x, labels), (x, tau)
        results.append([value, *torch.autograd.grad(value, leaves)])
    rtol = 2e-5 if impl == "triton" else 1e-10
    for got, ref in zip(*results):
        got = got.double()
        scale = ref.abs().amax(-1, keepdim=True) if ref.dim() == 2 else ref.abs()
        assert ((got - ref).abs() <= rtol * scale + 1e-12).all(), (got, ref)
