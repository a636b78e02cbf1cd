"""The SH→MH warm-up: exact ends, linear in between, resumable."""

import pytest
import torch
from pytorch_metric_learning.reducers import SumReducer

from vse_losses import MaxViolationLoss, MixedViolationLoss, SHToMHWarmup, SumHingeLoss


def test_warmup_moves_from_sh_to_mh():
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    sh = SumHingeLoss(reducer=SumReducer())(x, y)
    mh = MaxViolationLoss(reducer=SumReducer())(x, y)
    loss_fn = MixedViolationLoss(reducer=SumReducer())
    warmup = SHToMHWarmup(loss_fn, warmup_steps=4)
    values = []
    for _ in range(6):
        values.append(loss_fn(x, y))
        warmup.step()
    assert torch.equal(values[0], sh)
    torch.testing.assert_close(values[2], 0.5 * sh + 0.5 * mh, rtol=1e-10, atol=0)
    assert torch.equal(values[4], mh) and torch.equal(values[5], mh)
    assert [round(v, 6) for v in (0.0, 0.25, 0.5, 0.75, 1.0)] == [
        round(SHToMHWarmup(MixedViolationLoss(), 4, start=0.0).mix + s * 0.25, 6) for s in range(5)
    ]


def test_warmup_state_round_trip_and_errors():
    loss_fn = MixedViolationLoss()
    warmup = SHToMHWarmup(loss_fn, warmup_steps=10, start=0.2)
    for _ in range(3):
        warmup.step()
    state = warmup.state_dict()
    other_loss = MixedViolationLoss()
    other = SHToMHWarmup(other_loss, warmup_steps=1)
    other.load_state_dict(state)
    assert other_loss.mix == pytest.approx(0.2 + 0.8 * 0.3) == loss_fn.mix
    assert SHToMHWarmup(MixedViolationLoss(), warmup_steps=0).mix == 1.0
    with pytest.raises(ValueError, match="drives a MixedViolationLoss"):
        SHToMHWarmup(SumHingeLoss(), 10)
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0"):
        SHToMHWarmup(MixedViolationLoss(), -1)
