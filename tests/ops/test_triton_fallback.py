"""A Triton kernel that fails to compile or launch (injected here) under ``impl="auto"``: one
warning naming the cause, then the chunked torch path for that configuration, with the values of
an explicit float64 loop; under ``impl="triton"``: a clear error. The real kernels run in triton's
interpreter, where the probe is switched on for these tests."""

import dataclasses
import warnings

import pytest
import torch

import vse_losses
from tests.support.reference import cosine, loop_terms
from vse_losses import ops, planner
from vse_losses.miners import cross_modal_negative_miner as miner_module

pytest.importorskip("triton")
if not ops.triton_available():
    pytest.skip("no supported triton", allow_module_level=True)

from triton.runtime.errors import OutOfResources  # noqa: E402

CAUSE = "shared memory, Required: 262144, Hardware limit: 232448"


def _fail(*args, **kwargs):
    raise OutOfResources(262144, 232448, "shared memory")


@pytest.fixture
def triton_first(monkeypatch):
    """``auto`` picks the Triton backend on the CPU (the interpreter), probed like a GPU's; returns
    a function that breaks one of the backend's operations, and the calls each operation got."""
    monkeypatch.setattr(ops, "PROBE_INTERPRETED", True)
    monkeypatch.setattr(ops, "_TRITON_OK", set())
    monkeypatch.setattr(ops, "_TRITON_FAILED", {})
    state = {"backend": ops._triton_backend(), "calls": {}}

    def resolve(impl, x, n_pairs, kind=None, y=None, _orig=ops.resolve_backend):
        return state["backend"] if impl in ("auto", "triton") else _orig(impl, x, n_pairs, kind, y)

    monkeypatch.setattr(planner, "resolve_backend", resolve)
    monkeypatch.setattr(miner_module, "resolve_backend", resolve)

    def break_op(name):
        def failing(*args, **kwargs):
            state["calls"][name] = state["calls"].get(name, 0) + 1
            _fail()

        state["backend"] = dataclasses.replace(state["backend"], **{name: failing})
        return state["calls"]

    return break_op


def _inputs(B=6, D=8):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def _reference_sum_hinge(x, y):
    return loop_terms(cosine(x.double(), y.double()), kind="sum").mean()


def test_auto_falls_back_once_with_the_cause_and_the_exact_value(triton_first):
    calls = triton_first("hinge_norm_pairs")  # SH's forward kernel
    x, y = _inputs()
    loss = vse_losses.SumHingeLoss(impl="auto")
    with pytest.warns(ops.TritonFallbackWarning, match="OutOfResources.*shared memory") as record:
        first = loss(x, y)
    assert len(record) == 1
    torch.testing.assert_close(first.double(), _reference_sum_hinge(x, y), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the broken kernel is not tried again
        second = loss(x, y)
    assert calls == {"hinge_norm_pairs": 1}
    torch.testing.assert_close(second, first)


def test_a_failure_in_the_backward_is_caught_before_the_call_returns(triton_first):
    triton_first("mh_side")  # used only by the backward of the paired MH
    x, y = (t.requires_grad_() for t in _inputs(B=130))  # above the one-launch small-batch kernel's B
    with pytest.warns(ops.TritonFallbackWarning, match="OutOfResources"):
        loss = vse_losses.MaxViolationLoss(impl="auto")(x, y)
    loss.backward()  # on the chunked path: nothing raises
    x64, y64 = (t.detach().double().requires_grad_() for t in (x, y))
    loop_terms(cosine(x64, y64), kind="max").mean().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y.grad.double(), y64.grad, rtol=1e-4, atol=1e-6)


def test_explicit_triton_raises_a_clear_error(triton_first):
    triton_first("hinge_norm_pairs")
    x, y = _inputs()
    with pytest.raises(RuntimeError, match=r"impl='triton' failed .*OutOfResources.*impl='chunked'"):
        vse_losses.SumHingeLoss(impl="triton")(x, y)


def test_bad_input_is_a_value_error_not_a_fallback(triton_first):
    triton_first("hinge_norm_pairs")
    x, y = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="as many captions as images"):
            vse_losses.SumHingeLoss(impl="auto")(x, y[:4])


def test_the_miner_falls_back_too(triton_first):
    triton_first("negative_max")
    x, y = _inputs()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.warns(ops.TritonFallbackWarning, match="OutOfResources"):
        a, p, n = vse_losses.HardestNegativeMiner(impl="auto")(x, labels, ref_emb=y, ref_labels=labels)
    S = cosine(x.double(), y.double())
    for ai, ni in zip(a.tolist(), n.tolist()):
        negatives = [j for j in range(6) if labels[j] != labels[ai]]
        assert ni == max(negatives, key=lambda j: (S[ai, j].item(), -j))


def test_working_kernels_are_probed_once_without_a_warning(triton_first):
    x, y = _inputs()
    loss = vse_losses.SumHingeLoss(impl="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = loss(x, y)
        loss(x, y)
    assert len(ops._TRITON_OK) == 1 and not ops._TRITON_FAILED
    torch.testing.assert_close(value.double(), _reference_sum_hinge(x, y), rtol=1e-5, atol=1e-6)


def test_a_warm_up_or_a_margin_schedule_is_probed_once(triton_first):
    """λ and the margin change every step of a warm-up or a schedule; the kernels do not."""
    x, y = _inputs()
    loss = vse_losses.MixedViolationLoss(mix=0.1, impl="auto")
    for step in range(4):
        loss.mix = 0.1 + 0.2 * step
        loss.margin = 0.1 + 0.05 * step
        loss(x, y)
    assert len(ops._TRITON_OK) == 1 and not ops._TRITON_FAILED


def test_the_configuration_key_follows_what_selects_the_kernels():
    from vse_losses.norms import Norm

    def key(B, M=None, D=1024, dtype=torch.bfloat16, norm=None, margin=0.2):
        norm = norm or Norm("max")
        x = torch.empty(B, D, dtype=dtype, device="meta")
        y = torch.empty(M or B, D, dtype=dtype, device="meta")
        return ops.kernel_config("violation_terms", x, y, None, None, margin, norm, "both", None, None, True, True)

    assert key(65536) == key(131072)  # large sizes by their tile evenness: one probe
    assert key(2000) == key(3008) != key(2048) != key(2001)
    assert key(1000) != key(999)  # small ones exactly (the one-launch kernel's tiles follow B)
    assert key(4096, margin=0.1) == key(4096, margin=0.3)
    assert key(4096, norm=Norm("mix", mix=0.2)) == key(4096, norm=Norm("mix", mix=0.7))
    assert key(4096, norm=Norm("lse", temperature=0.05)) == key(4096, norm=Norm("lse", temperature=0.1))
    assert key(4096, norm=Norm("lse", temperature=torch.tensor(0.05))) != key(4096, norm=Norm("lse", temperature=0.05))
    assert key(4096, norm=Norm("lp", p=3.0)) == key(4096, norm=Norm("lp", p=4.0)) != key(4096, norm=Norm("lp", p=2.0))
    assert key(4096, norm=Norm("topk", k=2)) != key(4096, norm=Norm("topk", k=3))
    assert key(4096, D=1000) != key(4096) != key(4096, dtype=torch.float16)
