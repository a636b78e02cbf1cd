"""Every bad input raises ValueError naming the problem and the fix (docs/design.md, "Errors")."""

import math

import pytest
import torch
from pytorch_metric_learning.reducers import DivisorReducer

import vse_losses
from vse_losses import functional as VF

LOSSES = [
    vse_losses.SumHingeLoss,
    vse_losses.MaxViolationLoss,
    vse_losses.TopKViolationLoss,
    vse_losses.LpViolationLoss,
    vse_losses.MixedViolationLoss,
]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 2.5}, "k must be an integer"),
        ({"k": True}, "k must be an integer"),
    ],
)
def test_bad_k(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vse_losses.TopKViolationLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        vse_losses.TopKNegativeMiner(**kwargs)


@pytest.mark.parametrize("p,match", [(0.5, "p must be >= 1"), (float("nan"), "p must be a number"), ("2", "p must be")])
def test_bad_p(p, match):
    with pytest.raises(ValueError, match=match):
        vse_losses.LpViolationLoss(p=p)


@pytest.mark.parametrize("cls", LOSSES)
@pytest.mark.parametrize("margin,match", [(-0.1, "margin must be >= 0"), (math.inf, "finite"), ("0.2", "number")])
def test_bad_margin(cls, margin, match):
    with pytest.raises(ValueError, match=match):
        cls(margin=margin)
    loss = cls()  # set between calls, as a schedule would: validated too, the old value kept
    with pytest.raises(ValueError, match=match):
        loss.margin = margin
    assert loss.margin == 0.2
    loss.margin = 0.05
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(loss(x, y), cls(margin=0.05)(x, y))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"directions": "up"}, "directions must be one of"),
        ({"impl": "cuda"}, "impl must be one of"),
    ],
)
def test_bad_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vse_losses.MaxViolationLoss(**kwargs)


def test_bad_mix():
    with pytest.raises(ValueError, match=r"mix must be a number in \[0, 1\]"):
        vse_losses.MixedViolationLoss(mix=1.5)
    loss_fn = vse_losses.MixedViolationLoss()
    with pytest.raises(ValueError, match="mix"):
        loss_fn.mix = -0.1


@pytest.mark.parametrize("cls", LOSSES)
def test_bad_inputs(cls):
    loss_fn = cls()
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    cases = [
        ((torch.randn(4), y), "must be 2-D"),
        ((torch.randn(4, 3, 2), y), "must be 2-D"),
        ((x, torch.randn(4, 5)), "different sizes"),
        ((x, torch.randn(5, 3)), "as many captions as images"),
        ((torch.randn(0, 3), torch.randn(0, 3)), "empty batch"),
        ((torch.ones(4, 3, dtype=torch.long), torch.arange(4)), "floating-point"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            loss_fn(*args)
    with pytest.raises(ValueError, match="3 entries but embeddings has 4 rows"):
        loss_fn(x, torch.arange(3), ref_emb=y)
    with pytest.raises(ValueError, match="must be 1-D"):
        loss_fn(x, torch.arange(4).view(2, 2), ref_emb=y)
    with pytest.raises(ValueError, match="ref_labels has 3 entries"):
        loss_fn(x, torch.arange(4), ref_emb=y, ref_labels=torch.arange(3))
    with pytest.raises(ValueError, match="pass ref_labels"):
        loss_fn(x, torch.arange(4), ref_emb=torch.randn(6, 3))
    with pytest.raises(ValueError, match="one modality needs labels"):
        loss_fn(x)
    with pytest.raises(ValueError, match="ref_labels were given without labels"):
        loss_fn(x, ref_emb=y, ref_labels=torch.arange(4))
    with pytest.raises(ValueError, match="pass the captions once"):
        loss_fn(x, y, ref_emb=y)
    with pytest.raises(ValueError, match="indices_tuple must be PML triplets"):
        loss_fn(x, torch.arange(4), (torch.arange(2), torch.arange(2)), ref_emb=y)
    with pytest.raises(ValueError, match="ref_labels without ref_emb: one modality"):
        loss_fn(x, torch.arange(4), ref_labels=torch.tensor([0, 0, 1, 1]))
    loss_fn.reducer = DivisorReducer()
    with pytest.raises(ValueError, match="DivisorReducer divides by a 'divisor'.*MeanReducer"):
        loss_fn(x, y)


def test_functional_bad_inputs():
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        VF.top_k_violation_loss(x, y, k=0)
    with pytest.raises(ValueError, match="p must be >= 1"):
        VF.lp_violation_loss(x, y, p=0.9)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        VF.max_violation_loss(x, y, margin=-1.0)
    with pytest.raises(ValueError, match="either embeddings"):
        VF.max_violation_loss(x, y, scores=x @ y.t())
    with pytest.raises(ValueError, match="reduction must be one of"):
        VF.max_violation_loss(x, y, reduction="avg")
    with pytest.raises(ValueError, match="one modality without labels"):
        VF.max_violation_loss(x)
    with pytest.raises(ValueError, match="scores must be 2-D"):
        VF.max_violation_loss(scores=torch.randn(4))
    for kwargs in ({"impl": "triton"}, {"impl": "chunked"}, {"similarity": "dot"}, {"similarity": "order"}):
        with pytest.raises(ValueError, match="scores= are the similarities themselves"):
            VF.max_violation_loss(scores=x @ y.t(), **kwargs)
    with pytest.raises(ValueError, match="ref_labels without cap: one modality"):
        VF.max_violation_loss(x, labels=torch.arange(4), ref_labels=torch.tensor([0, 0, 1, 1]))


def test_triton_on_cpu_says_what_to_do(monkeypatch):
    # triton reads TRITON_INTERPRET once, when first imported: import it under the suite's setting
    # first, or a later test would get compiled-mode kernels on the CPU
    from vse_losses.ops import triton_available

    triton_available()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="impl='chunked' on the CPU"):
        vse_losses.MaxViolationLoss(impl="triton")(torch.randn(4, 3), torch.randn(4, 3))


def test_triton_with_a_dtype_it_cannot_take_names_both_operands():
    # the interpreter runs float32 but not float64: an explicit triton refuses the pair up front,
    # whichever operand is the float64 one (the kernels would take their common dtype)
    from vse_losses.ops import triton_runs

    x = torch.randn(4, 3)
    if not triton_runs(x):
        pytest.skip("needs triton's interpreter (TRITON_INTERPRET=1, as the suite sets)")
    for a, b in ((x, x.double()), (x.double(), x)):
        with pytest.raises(ValueError, match="impl='triton' needs .*float64"):
            VF.max_violation_loss(a, b, impl="triton")
        with pytest.raises(ValueError, match="impl='triton' needs .*float64"):
            vse_losses.HardestNegativeMiner(impl="triton")(a, b)


def test_miner_bad_inputs():
    miner = vse_losses.HardestNegativeMiner()
    with pytest.raises(ValueError, match="different sizes"):
        miner(torch.randn(4, 3), None, torch.randn(4, 2))
    with pytest.raises(ValueError, match="one modality needs labels"):
        miner(torch.randn(4, 3))
    with pytest.raises(ValueError, match="ref_labels without ref_emb"):
        miner(torch.randn(4, 3), torch.arange(4), ref_labels=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="ref_labels without ref_emb"):
        vse_losses.CollapseAlarm().update(torch.randn(4, 3), torch.arange(4), ref_labels=torch.arange(4))
    with pytest.raises(ValueError, match="always mines k=1"):
        vse_losses.HardestNegativeMiner(k=2)


BAD_LABELS = [
    (torch.tensor([True, False, True, False]), "torch.bool"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "torch.float32"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), "torch.float64"),
    (torch.zeros(4, dtype=torch.complex64), "torch.complex64"),
]


@pytest.mark.parametrize("labels,dtype", BAD_LABELS)
def test_labels_must_be_integer(labels, dtype):
    # bool labels used to fail deep inside the chunked search, 1-D float labels were accepted
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    ids = torch.arange(4)
    match = f"must hold integer class ids, got dtype {dtype}.*long"
    for cls in (vse_losses.SumHingeLoss, vse_losses.MaxViolationLoss):
        for impl in ("dense", "chunked"):
            loss_fn = cls(impl=impl)
            with pytest.raises(ValueError, match=match):
                loss_fn(x, labels, ref_emb=y)
            with pytest.raises(ValueError, match=match):
                loss_fn(x, ids, ref_emb=y, ref_labels=labels)
            with pytest.raises(ValueError, match=match):
                loss_fn(x, labels)  # one modality
    with pytest.raises(ValueError, match=match):
        VF.max_violation_loss(x, y, labels=labels)
    with pytest.raises(ValueError, match=match):
        VF.sum_hinge_loss(x, y, labels=ids, ref_labels=labels, impl="chunked")
    with pytest.raises(ValueError, match=match):
        VF.sum_hinge_loss(scores=x @ y.t(), labels=labels)
    with pytest.raises(ValueError, match=match):
        vse_losses.HardestNegativeMiner()(x, labels, y, ids)


def test_zero_features():
    x, y = torch.zeros(4, 0), torch.zeros(4, 0)
    for cls in (vse_losses.SumHingeLoss, vse_losses.MaxViolationLoss):
        with pytest.raises(ValueError, match=r"embeddings has no features \(shape \(4, 0\)\)"):
            cls()(x, y)
        with pytest.raises(ValueError, match="no features"):
            cls()(x, torch.arange(4))
    with pytest.raises(ValueError, match="has no features"):
        VF.max_violation_loss(x, y)
    with pytest.raises(ValueError, match="no features"):
        VF.max_violation_loss(torch.randn(4, 3), y)
    with pytest.raises(ValueError, match="scores has no features"):
        VF.max_violation_loss(
            scores=torch.zeros(4, 0), labels=torch.arange(4), ref_labels=torch.zeros(0, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="no features"):
        vse_losses.TopKNegativeMiner(k=2)(x, torch.arange(4))


@pytest.mark.parametrize(
    "cls,attr,value,match",
    [
        (vse_losses.TopKViolationLoss, "k", 0, "k must be >= 1"),
        (vse_losses.TopKViolationLoss, "k", True, "k must be an integer"),  # not the k=1 norm
        (vse_losses.LpViolationLoss, "p", 0.5, "p must be >= 1"),
        (vse_losses.LpViolationLoss, "p", [2.0], "p must be"),  # unhashable: still a ValueError
    ],
)
def test_hyperparameter_changed_after_construction_is_checked_at_the_call(cls, attr, value, match):
    """The loss classes reuse one Norm per distinct hyper-parameters (norms.norm_of): a value set
    after construction is still validated when the loss is called."""
    loss_fn = cls()
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    loss_fn(x, y)  # a valid norm is cached first
    setattr(loss_fn, attr, value)
    with pytest.raises(ValueError, match=match):
        loss_fn(x, y)


def test_norm_of_reuses_one_norm_per_arguments():
    from vse_losses.norms import Norm, norm_of

    assert norm_of("topk", k=3) is norm_of("topk", k=3) == Norm("topk", k=3)
    assert norm_of("topk", k=1).kind == "max" and norm_of("lp", p=1.0).kind == "sum"
    tau = torch.tensor(0.1, requires_grad=True)
    a, b = norm_of("infonce", temperature=tau), norm_of("infonce", temperature=tau)
    assert a is not b and a.temperature is tau and b.temperature is tau  # a learned τ: never cached
