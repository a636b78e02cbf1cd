"""The paired call ``loss(img, cap)`` knows its pairs (j, j) without enumerating them: the same
values and gradients as the labelled call with ``labels = arange(B)``, and no operation whose
output size depends on the data (on CUDA each one is a device synchronisation)."""

import pytest
import torch
from pytorch_metric_learning import reducers
from pytorch_metric_learning.losses import BaseMetricLossFunction
from torch.profiler import ProfilerActivity, profile

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES
from vse_losses.ops import topk as topk_module

# operations that read a device value back, or size their output by the data
SYNCING = {
    "aten::_local_scalar_dense",
    "aten::item",
    "aten::nonzero",
    "aten::repeat_interleave",
    "aten::equal",
    "aten::is_nonzero",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique2",
}


def _inputs(B=37, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_paired_equals_labelled_identity(name, kwargs, norm, impl):
    x0, y0 = _inputs()
    ids = torch.arange(x0.shape[0])
    out = {}
    for form in ("paired", "labelled"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        loss_fn = getattr(vse_losses, name)(impl=impl, **kwargs)
        loss = loss_fn(x, y) if form == "paired" else loss_fn(x, ids, ref_emb=y, ref_labels=ids.clone())
        loss.backward()
        out[form] = (loss.detach(), x.grad, y.grad)
    for a, b in zip(out["paired"], out["labelled"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_paired_call_has_no_data_dependent_ops(name, kwargs, norm, impl, monkeypatch):
    # top-k's tie rule looks at its counts on the host only off CUDA, where that costs nothing:
    # take the GPU's branch here
    monkeypatch.setattr(topk_module, "_host_check", lambda v: False)
    x0, y0 = _inputs(B=300, D=16, seed=1)  # several tiles for the chunked kernels
    x, y = x0.float().requires_grad_(), y0.float().requires_grad_()
    loss_fn = getattr(vse_losses, name)(impl=impl, **kwargs)
    loss_fn(x, y).backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_fn(x, y).backward()
    names = {e.name for e in prof.events()}
    assert "aten::mm" in names or "aten::matmul" in names  # the profiler saw the call
    assert not names & SYNCING, sorted(names & SYNCING)
    # the labelled call does enumerate its pairs: the check above can fail
    ids = torch.arange(300)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_fn(x, ids, ref_emb=y, ref_labels=ids.clone()).backward()
    assert {e.name for e in prof.events()} & SYNCING


class _MeanViaPML(reducers.MeanReducer):
    """A MeanReducer the plain-reducer shortcut does not recognise: PML's own forward runs."""


class _SumViaPML(reducers.SumReducer):
    pass


def _call(loss_fn, form, x, y):
    """The call forms without mined tuples: paired, cross-modal with repeated labels (and ref_labels
    omitted: the same labels), one modality with labels."""
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    if form == "paired":
        return loss_fn(x, y)
    if form == "labelled":
        return loss_fn(x, labels, ref_emb=y, ref_labels=labels.flip(0))
    if form == "same labels":
        return loss_fn(x, labels, ref_emb=y)
    return loss_fn(x, labels)  # one modality


@pytest.mark.parametrize("form", ["paired", "labelled", "same labels", "one modality"])
@pytest.mark.parametrize("directions", ["both", "t2i"])
@pytest.mark.parametrize("reducer,via_pml", [(reducers.MeanReducer, _MeanViaPML), (reducers.SumReducer, _SumViaPML)])
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_plain_reducer_shortcut_equals_pml_forward(name, kwargs, norm, reducer, via_pml, directions, form, monkeypatch):
    """A call without mined tuples and with a plain MeanReducer/SumReducer skips PML's forward and
    reducer (fixed costs at small batches): the same value and gradients as through them."""
    x0, y0 = _inputs(B=9, D=5, seed=2)
    out = {}
    for r in (reducer, via_pml):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        loss_fn = getattr(vse_losses, name)(reducer=r(), directions=directions, **kwargs)
        with monkeypatch.context() as m:
            if r is reducer:  # the shortcut is taken: PML's forward is not reached
                m.setattr(BaseMetricLossFunction, "forward", lambda *a, **k: pytest.fail("PML's forward ran"))
            loss = _call(loss_fn, form, x, y)
        loss.backward()
        out[r] = (loss.detach(), x.grad, None if form == "one modality" else y.grad)
    assert out[reducer][0] != 0
    for a, b in zip(out[reducer], out[via_pml]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_subclass_compute_loss_is_not_bypassed():
    """PML's template: a subclass that overrides compute_loss gets it called, plain reducer or not."""

    class Doubled(vse_losses.SumHingeLoss):
        def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
            out = super().compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
            out["loss"]["losses"] = out["loss"]["losses"] * 2
            return out

    x0, y0 = _inputs(B=9, D=5, seed=4)
    assert Doubled()(x0, y0).item() == pytest.approx(2 * vse_losses.SumHingeLoss()(x0, y0).item(), rel=1e-12)
