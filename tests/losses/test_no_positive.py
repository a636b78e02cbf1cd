"""A batch without any positive pair (labels and ref_labels disjoint) gives a finite 0 with zero
gradients under every reducer, as PML's own losses do, and says so in the statistics."""

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers

import vse_losses
from tests.support.cases import LOSS_CASES
from vse_losses import functional as VF

REDUCERS = [
    reducers.MeanReducer,
    reducers.SumReducer,
    reducers.AvgNonZeroReducer,
    lambda: reducers.ThresholdReducer(low=0.1),
    lambda: reducers.ThresholdReducer(high=5.0),
]


def inputs():
    x = torch.randn(6, 8, requires_grad=True)
    y = torch.randn(5, 8, requires_grad=True)
    return x, y, torch.arange(6), torch.arange(5) + 100


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("make_reducer", REDUCERS)
@pytest.mark.parametrize("name,kwargs,_", LOSS_CASES)
def test_loss_is_zero_with_zero_gradients(name, kwargs, _, make_reducer, impl):
    x, y, lab, ref_lab = inputs()
    loss = getattr(vse_losses, name)(reducer=make_reducer(), impl=impl, **kwargs)(x, lab, ref_emb=y, ref_labels=ref_lab)
    # PML's own losses on the same batch
    pml = pml_losses.TripletMarginLoss(reducer=make_reducer())(x, lab, ref_emb=y, ref_labels=ref_lab)
    assert loss.item() == 0.0 == pml.item() and not torch.signbit(loss)
    gx, gy = torch.autograd.grad(loss, [x, y])  # both inputs in the graph: zeros, not None
    assert torch.equal(gx, torch.zeros_like(x)) and torch.equal(gy, torch.zeros_like(y))


def test_one_modality_without_positive():
    x = torch.randn(5, 4, requires_grad=True)
    loss = vse_losses.MaxViolationLoss()(x, torch.arange(5))  # every label once: no pair
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, [x])
    assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("fn", [VF.sum_hinge_loss, VF.max_violation_loss])
def test_functional_is_zero(fn, impl):
    x, y, lab, ref_lab = inputs()
    for reduction in ("mean", "sum"):
        loss = fn(x, y, labels=lab, ref_labels=ref_lab, reduction=reduction, impl=impl)
        assert loss.item() == 0.0 and not torch.signbit(loss)
        gx, gy = torch.autograd.grad(loss, [x, y])
        assert not gx.any() and not gy.any()
    assert fn(x, y, labels=lab, ref_labels=ref_lab, reduction="none").shape == (0,)
    s = (x @ y.t()).detach().requires_grad_()
    loss = fn(scores=s, labels=lab, ref_labels=ref_lab)
    assert loss.item() == 0.0
    assert not torch.autograd.grad(loss, [s])[0].any()


def test_nan_input_is_still_reported():
    # the zero is tied to the inputs: a NaN in them still shows, as for any other batch
    x, y, lab, ref_lab = inputs()
    with torch.no_grad():
        x[0, 0] = float("nan")
    assert torch.isnan(vse_losses.SumHingeLoss()(x, lab, ref_emb=y, ref_labels=ref_lab))


@pytest.mark.parametrize("impl", ["dense", "chunked"])
@pytest.mark.parametrize("directions,expected", [("both", 3 + 2), ("i2t", 3), ("t2i", 2)])
def test_stats_count_anchors_without_positive(impl, directions, expected):
    # rows 0-2 of x have no caption of their label; captions 3-4 have no image of theirs
    x, y = torch.randn(6, 8), torch.randn(5, 8)
    lab = torch.tensor([10, 11, 12, 0, 1, 2])
    ref_lab = torch.tensor([0, 1, 2, 20, 21])
    loss_fn = vse_losses.MaxViolationLoss(impl=impl, directions=directions, collect_stats=True)
    loss_fn(x, lab, ref_emb=y, ref_labels=ref_lab)
    assert loss_fn.num_anchors_without_positive == expected
    loss_fn(x, torch.arange(6) + 50, ref_emb=y, ref_labels=ref_lab)
    assert loss_fn.num_anchors_without_positive == {"both": 11, "i2t": 6, "t2i": 5}[directions]
    loss_fn(x[:5], y)  # paired: every row has its pair
    assert loss_fn.num_anchors_without_positive == 0
