"""The hinge losses with the cosine folded into the kernels: on ``chunked`` and ``triton`` no path of
a local call normalises copies of x and y (the hinge norms, the hardest-negative selection, the
selected and positive scores take the rows' scales instead), and the losses and their gradients
equal ``impl="dense"``'s (which normalises) on unnormalised rows whose norms span 1e-3 … 1e3.
(The temperature losses: tests/losses/test_temperature.py.)"""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from vse_losses.ops import triton_available

F64 = dict(dtype=torch.float64)
IMPLS = ["chunked"] + (["triton"] if triton_available() else [])
LOSSES = [
    ("SumHingeLoss", {}),
    ("TopKViolationLoss", {"k": 3}),
    ("LpViolationLoss", {"p": 2.0}),
    ("LpViolationLoss", {"p": 3.5}),
    ("MixedViolationLoss", {"mix": 0.3}),
    ("MaxViolationLoss", {}),
]
FORMS = ["paired", "labels", "self_ref", "i2t"]


def inputs(form, seed=41):
    g = torch.Generator().manual_seed(seed)
    B, M = 19, 19 if form != "labels" else 24
    x0 = torch.randn(B, 8, generator=g, **F64) * torch.logspace(-3, 3, B, **F64)[torch.randperm(B, generator=g), None]
    y0 = torch.randn(M, 8, generator=g, **F64) * torch.logspace(3, -3, M, **F64)[:, None]
    labels = torch.randint(0, 6, (B,), generator=g)
    ref_labels = torch.randint(0, 6, (M,), generator=g)
    return x0, y0, labels, ref_labels


def value_and_grads(name, kwargs, form, impl, dtype, x0, y0, labels, ref_labels):
    x = x0.to(dtype).requires_grad_()
    y = y0.to(dtype).requires_grad_()
    loss_fn = getattr(vse_losses, name)(
        **kwargs, margin=0.3, impl=impl, reducer=SumReducer(), directions="i2t" if form == "i2t" else "both"
    )
    if form in ("paired", "i2t"):
        value, leaves = loss_fn(x, y), (x, y)
    elif form == "labels":
        value, leaves = loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels), (x, y)
    else:  # one modality: the labels' pairs within x
        value, leaves = loss_fn(x, labels), (x,)
    return [value, *torch.autograd.grad(value, leaves)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name,kwargs", LOSSES, ids=lambda v: str(v))
def test_cosine_folded_into_the_kernels_matches_dense(name, kwargs, form, impl):
    # triton in float32 (each row's gradient, ∝ 1/‖row‖, to 2e-5 of its own size), chunked in
    # float64 (1e-10)
    dtype = torch.float32 if impl == "triton" else torch.float64
    data = inputs(form)
    got = value_and_grads(name, kwargs, form, impl, dtype, *data)
    ref = value_and_grads(name, kwargs, form, "dense", torch.float64, *data)
    rtol = 2e-5 if impl == "triton" else 1e-10
    for what, g, r in zip(("loss", "grad x", "grad y"), got, ref):
        g = g.double()
        scale = r.abs().amax(-1, keepdim=True) if r.dim() == 2 else r.abs()
        assert ((g - r).abs() <= rtol * scale + 1e-12).all(), (what, g, r)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form", ["paired", "labels"])
@pytest.mark.parametrize("name,kwargs", LOSSES, ids=lambda v: str(v))
def test_no_normalised_copies(name, kwargs, form, impl, monkeypatch):
    # F.normalize is what made the copies: forward and backward run without it
    data = inputs(form, seed=42)
    dtype = torch.float32 if impl == "triton" else torch.float64
    ref = value_and_grads(name, kwargs, form, "dense", torch.float64, *data)

    def no_copies(*args, **kwargs):
        raise AssertionError("a normalised copy of the embeddings")

    monkeypatch.setattr(F, "normalize", no_copies)
    got = value_and_grads(name, kwargs, form, impl, dtype, *data)
    torch.testing.assert_close(got[0].double(), ref[0], rtol=1e-5, atol=1e-6)
