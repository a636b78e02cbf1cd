"""Fuzzing the public API: on any input, a ValueError or a finite value with finite gradients.

Shapes, dtypes, labels (integer, bool, float; right and wrong lengths), hyper-parameters, call
forms, reducers and implementations are drawn by hypothesis; the inputs themselves are finite.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import reducers
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance

import vse_losses
from vse_losses import functional as VF

LOSSES = {
    "sum": (vse_losses.SumHingeLoss, VF.sum_hinge_loss, {}),
    "max": (vse_losses.MaxViolationLoss, VF.max_violation_loss, {}),
    "topk": (vse_losses.TopKViolationLoss, VF.top_k_violation_loss, {"k": st.sampled_from([0, 1, 2, 3, 6])}),
    "lp": (
        vse_losses.LpViolationLoss,
        VF.lp_violation_loss,
        {"p": st.sampled_from([1.0, 1.5, 2.0, 7.0, 60.0, math.inf, 0.5])},
    ),
    "mix": (
        vse_losses.MixedViolationLoss,
        VF.mixed_violation_loss,
        {"mix": st.sampled_from([0.0, 0.4, 0.7, 1.0, 1.5])},
    ),
}
REDUCERS = [
    reducers.MeanReducer,
    reducers.SumReducer,
    reducers.AvgNonZeroReducer,
    lambda: reducers.ThresholdReducer(low=0.05),
    reducers.DoNothingReducer,
]


@st.composite
def tensors(draw, rows, cols, dtype):
    scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g, dtype=torch.float64) * scale).to(dtype)


@st.composite
def labels(draw, n):
    # mostly valid: the bad kinds are one draw in three
    kind = draw(
        st.sampled_from(
            [
                "none",
                "int64",
                "int64",
                "int64",
                "int32",
                "int8",
                "int64",
                "int64",
                "none",
                "int64",
                "bool",
                "float",
                "short",
                "2d",
            ]
        )
    )
    if kind == "none":
        return None
    n = n - 1 if kind == "short" and n > 0 else n
    values = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=torch.int64)
    if kind == "2d":
        return values.view(-1, 1)
    dtype = {"int32": torch.int32, "int8": torch.int8, "bool": torch.bool, "float": torch.float32}.get(kind)
    return values if dtype is None else values.to(dtype)


def check_finite(loss, inputs):
    if isinstance(loss, dict):  # DoNothingReducer: the terms
        loss = loss["loss"]["losses"]
    assert torch.isfinite(loss).all(), loss
    if loss.requires_grad and loss.numel():
        grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all()


SIZES = st.sampled_from([1, 2, 3, 4, 5, 6, 0])  # an empty batch or no feature now and then
fuzz = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@fuzz
@given(
    data=st.data(),
    name=st.sampled_from(sorted(LOSSES)),
    impl=st.sampled_from(["dense", "chunked", "auto"]),
    B=SIZES,
    M=SIZES,
    D=SIZES,
    same=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    form=st.sampled_from(["paired", "pml", "one_modality"]),
    directions=st.sampled_from(["both", "i2t", "t2i", "both", "up"]),
    distance=st.sampled_from(["cosine", "dot", "lp"]),
    margin=st.sampled_from([0.0, 0.2, 1.5, 0.2, -0.1]),
)
def test_loss_classes(data, name, impl, B, M, D, same, dtype, form, directions, distance, margin):
    cls, _, params = LOSSES[name]
    kwargs = {k: data.draw(v) for k, v in params.items()}
    M = B if same else M  # the paired form needs as many rows on both sides
    x = data.draw(tensors(B, D, dtype)).requires_grad_()
    y = data.draw(tensors(M, D, dtype)).requires_grad_()
    dist = {"cosine": None, "dot": DotProductSimilarity(), "lp": LpDistance()}[distance]
    extra = {} if dist is None else {"distance": dist}
    try:
        loss_fn = cls(
            margin=margin,
            directions=directions,
            impl=impl,
            reducer=data.draw(st.sampled_from(REDUCERS))(),
            collect_stats=data.draw(st.booleans()),
            **extra,
            **kwargs,
        )
        if form == "paired":
            loss = loss_fn(x, y)
        elif form == "pml":
            loss = loss_fn(x, data.draw(labels(B)), ref_emb=y, ref_labels=data.draw(labels(M)))
        else:
            loss = loss_fn(x, data.draw(labels(B)))
    except ValueError as e:
        event(str(e)[:60])
        return
    event("computed")
    check_finite(loss, [x, y])


@fuzz
@given(
    data=st.data(),
    name=st.sampled_from(sorted(LOSSES)),
    impl=st.sampled_from(["dense", "chunked"]),
    B=SIZES,
    M=SIZES,
    D=SIZES,
    same=st.booleans(),
    form=st.sampled_from(["embeddings", "one_modality", "scores"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    similarity=st.sampled_from(["cosine", "dot"]),
)
def test_functional(data, name, impl, B, M, D, same, form, reduction, similarity):
    _, fn, params = LOSSES[name]
    kwargs = {k: data.draw(v) for k, v in params.items()}
    M = B if same else M  # the paired form needs as many rows on both sides
    x = data.draw(tensors(B, D, torch.float32)).requires_grad_()
    y = data.draw(tensors(M, D, torch.float32)).requires_grad_()
    lab, ref_lab = data.draw(labels(B)), data.draw(labels(M))
    try:
        if form == "embeddings":
            loss = fn(
                x, y, labels=lab, ref_labels=ref_lab, reduction=reduction, impl=impl, similarity=similarity, **kwargs
            )
        elif form == "one_modality":
            loss = fn(x, labels=lab, reduction=reduction, impl=impl, similarity=similarity, **kwargs)
        else:
            s = data.draw(tensors(B, M, torch.float32)).requires_grad_()
            loss = fn(scores=s, labels=lab, ref_labels=ref_lab, reduction=reduction, **kwargs)
            x = s
    except ValueError as e:
        event(str(e)[:60])
        return
    event("computed")
    check_finite(loss, [x] if form != "embeddings" else [x, y])


@fuzz
@given(
    data=st.data(),
    k=st.sampled_from([1, 2, 3, 0]),
    impl=st.sampled_from(["dense", "chunked", "auto"]),
    B=SIZES,
    M=SIZES,
    D=SIZES,
    same=st.booleans(),
    form=st.sampled_from(["paired", "pml", "one"]),
)
def test_miners(data, k, impl, B, M, D, same, form):
    M = B if same else M
    x = data.draw(tensors(B, D, torch.float32))
    y = data.draw(tensors(M, D, torch.float32))
    try:
        miner = vse_losses.TopKNegativeMiner(k=k, impl=impl)
        if form == "paired":
            a, p, n = miner(x, y)
        elif form == "pml":
            a, p, n = miner(x, data.draw(labels(B)), y, data.draw(labels(M)))
        else:
            a, p, n = miner(x, data.draw(labels(B)))
    except ValueError as e:
        event(str(e)[:60])
        return
    event("computed")
    assert a.shape == p.shape == n.shape
    assert a.dtype == p.dtype == n.dtype == torch.int64


def test_fuzz_reaches_both_outcomes():
    # the fuzzers above accept either outcome; make sure both occur for inputs they can draw
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.isfinite(vse_losses.MaxViolationLoss()(x, y))
    with pytest.raises(ValueError):
        vse_losses.MaxViolationLoss()(x, torch.tensor([True, False, True, True]), ref_emb=y)
