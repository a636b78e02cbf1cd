"""Every loss equals the paper's equations, written as explicit loops, to 1e-8 relative in float64."""

import pytest
import torch
from pytorch_metric_learning.distances import DotProductSimilarity
from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer, SumReducer, ThresholdReducer

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES
from tests.support.reference import cosine, loop_terms, original_vsepp_loss
from vse_losses import functional as VF

F64 = dict(dtype=torch.float64)
FUNCTIONS = {
    "SumHingeLoss": "sum_hinge_loss",
    "MaxViolationLoss": "max_violation_loss",
    "TopKViolationLoss": "top_k_violation_loss",
    "LpViolationLoss": "lp_violation_loss",
    "MixedViolationLoss": "mixed_violation_loss",
    "LogSumExpViolationLoss": "log_sum_exp_violation_loss",
    "InfoNCELoss": "info_nce_loss",
}


def make_loss(name, kwargs, **extra):
    return getattr(vse_losses, name)(**{**kwargs, **extra})


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_paired_equals_loop(name, kwargs, norm, impl):
    x, y = torch.randn(7, 5, **F64), torch.randn(7, 5, **F64)
    expected = loop_terms(cosine(x, y), **norm).sum()
    got = make_loss(name, kwargs, reducer=SumReducer(), impl=impl)(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_duplicate_labels_equal_loop(name, kwargs, norm, impl):
    # COCO-like: the same image twice in a batch is never its own negative
    x, y = torch.randn(8, 4, **F64), torch.randn(8, 4, **F64)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    expected = loop_terms(cosine(x, y), labels, labels, **norm)
    got = make_loss(name, kwargs, reducer=SumReducer(), impl=impl)(x, labels, ref_emb=y, ref_labels=labels)
    torch.testing.assert_close(got, expected.sum(), rtol=1e-8, atol=1e-12)
    mean = make_loss(name, kwargs, impl=impl)(x, labels, ref_emb=y)
    torch.testing.assert_close(mean, expected.mean(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_rectangular_labels_equal_loop(name, kwargs, norm, impl):
    # B ≠ M: 4 images, 9 captions (some images with several captions, one caption of no image)
    x, y = torch.randn(4, 6, **F64), torch.randn(9, 6, **F64)
    labels = torch.tensor([10, 11, 12, 13])
    ref_labels = torch.tensor([10, 10, 11, 12, 12, 12, 13, 14, 11])
    expected = loop_terms(cosine(x, y), labels, ref_labels, **norm).sum()
    got = make_loss(name, kwargs, reducer=SumReducer(), impl=impl)(x, labels, ref_emb=y, ref_labels=ref_labels)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_one_modality_equals_loop(name, kwargs, norm, impl):
    # no ref_emb: embeddings are their own reference; a sample with itself is neither pos nor neg
    x = torch.randn(9, 5, **F64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 3, 0, 4])
    expected = loop_terms(cosine(x, x), labels, labels, self_ref=True, **norm).sum()
    got = make_loss(name, kwargs, reducer=SumReducer(), impl=impl)(x, labels)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_one_direction(name, kwargs, norm, impl, direction):
    x, y = torch.randn(6, 3, **F64), torch.randn(6, 3, **F64)
    expected = loop_terms(cosine(x, y), directions=direction, **norm).sum()
    got = make_loss(name, kwargs, reducer=SumReducer(), impl=impl, directions=direction)(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("max_violation", [False, True])
def test_equals_original_vsepp_criterion(max_violation, impl):
    x, y = torch.randn(16, 8, **F64), torch.randn(16, 8, **F64)
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    expected = original_vsepp_loss(xn, yn, 0.2, max_violation)
    cls = vse_losses.MaxViolationLoss if max_violation else vse_losses.SumHingeLoss
    torch.testing.assert_close(cls(reducer=SumReducer(), impl=impl)(x, y), expected, rtol=1e-8, atol=1e-12)
    # MeanReducer divides by the number of terms, 2B without labels
    torch.testing.assert_close(cls(reducer=MeanReducer(), impl=impl)(x, y), expected / 32, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_functional_on_scores_and_embeddings(name, kwargs, norm):
    fn = {
        "SumHingeLoss": VF.sum_hinge_loss,
        "MaxViolationLoss": VF.max_violation_loss,
        "TopKViolationLoss": VF.top_k_violation_loss,
        "LpViolationLoss": VF.lp_violation_loss,
        "MixedViolationLoss": VF.mixed_violation_loss,
        "LogSumExpViolationLoss": VF.log_sum_exp_violation_loss,
        "InfoNCELoss": VF.info_nce_loss,
    }[name]
    S = torch.randn(6, 8, **F64) * 0.3  # any similarity, e.g. from cross attention
    labels, ref_labels = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    expected = loop_terms(S, labels, ref_labels, margin=0.1, **norm)
    got = fn(scores=S, labels=labels, ref_labels=ref_labels, reduction="none", **{**kwargs, "margin": 0.1})
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    x, y = torch.randn(5, 4, **F64), torch.randn(5, 4, **F64)
    for impl in FAST_IMPLS:
        got = fn(x, y, reduction="sum", impl=impl, **kwargs)
        torch.testing.assert_close(got, loop_terms(cosine(x, y), **norm).sum(), rtol=1e-8, atol=1e-12)
        got = fn(x, y, reduction="mean", impl=impl, similarity="dot", **kwargs)
        torch.testing.assert_close(got, loop_terms(x @ y.t(), **norm).mean(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_collapse_plateau_is_margin_per_term(impl):
    # every embedding at one point: MH sits at exactly margin per term, 2·margin per pair summed
    x = torch.ones(10, 4, **F64)
    mh = vse_losses.MaxViolationLoss(margin=0.2, impl=impl)
    torch.testing.assert_close(mh(x, x.clone()), torch.tensor(0.2, **F64))
    mh_sum = vse_losses.MaxViolationLoss(margin=0.2, impl=impl, reducer=SumReducer())
    torch.testing.assert_close(mh_sum(x, x.clone()), torch.tensor(0.2 * 2 * 10, **F64))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_single_pair_is_zero_with_zero_gradients(name, kwargs, norm, impl):
    x = torch.randn(1, 4, requires_grad=True)
    y = torch.randn(1, 4, requires_grad=True)
    loss = make_loss(name, kwargs, impl=impl)(x, y)
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and y.grad is not None
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(y.grad, torch.zeros_like(y))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_a_nan_input_makes_every_term_nan(name, kwargs, norm, impl):
    """Every term, not only their sum: a reducer that filters terms (AvgNonZeroReducer keeps those
    > 0, and NaN > 0 is False) must not drop the NaN and return a finite loss; nor may a caller of
    reduction="none"."""
    labels = torch.tensor([0, 0, 1, 1, 2])
    for bad in (float("nan"), float("inf")):
        x, y = torch.randn(5, 3), torch.randn(5, 3)
        x[2, 1] = bad
        for reducer in (AvgNonZeroReducer(), ThresholdReducer(low=0.0)):
            assert torch.isnan(make_loss(name, kwargs, impl=impl, reducer=reducer)(x, y))
            assert torch.isnan(make_loss(name, kwargs, impl=impl, reducer=reducer)(x, labels, ref_emb=y))
        for lab in (None, labels):
            terms = getattr(VF, FUNCTIONS[name])(x, y, labels=lab, impl=impl, reduction="none", **kwargs)
            assert terms.numel() > 0 and torch.isnan(terms).all()


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_a_mean_is_nan_where_no_term_carries_the_bad_input(name, kwargs, norm, impl):
    """The plain mean's cheaper guard ("sum") must still guard where the terms do not carry a
    NaN/Inf: an unnormalised dot product whose infinite scores all fall below every threshold
    (inf·y_j1 = −inf for the negatives, +inf for the positive: every hinge clamps to 0), and a
    batch of one pair (no negative at all)."""
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    y[:, 1] = -1.0
    y[2, 1] = 1.0
    x[2, 1] = float("inf")
    dot = DotProductSimilarity(normalize_embeddings=False)
    for functional in (False, True):
        if functional:
            got = getattr(VF, FUNCTIONS[name])(x, y, impl=impl, similarity="dot", **kwargs)
        else:
            got = make_loss(name, kwargs, impl=impl, distance=dot)(x, y)
        assert torch.isnan(got), (functional, got)
    one_x, one_y = torch.randn(1, 3), torch.randn(1, 3)
    one_x[0, 0] = float("nan")
    assert torch.isnan(make_loss(name, kwargs, impl=impl)(one_x, one_y))
    assert torch.isnan(getattr(VF, FUNCTIONS[name])(one_x, one_y, impl=impl, **kwargs))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_nan_and_inf_never_give_a_finite_loss(name, kwargs, norm, impl):
    for bad in (float("nan"), float("inf")):
        x, y = torch.randn(5, 3), torch.randn(5, 3)
        x[2, 1] = bad
        assert not torch.isfinite(make_loss(name, kwargs, impl=impl)(x, y))
        labels = torch.tensor([0, 0, 1, 1, 2])
        assert not torch.isfinite(make_loss(name, kwargs, impl=impl)(y, labels, ref_emb=x))
