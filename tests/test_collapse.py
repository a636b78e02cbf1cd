"""The collapse alarm: its signals against explicit float64 loops, its thresholds at their edges, once
only, no effect on gradients, and real tiny trainings that collapse (MH, a high learning rate) or
learn (SH; MH at a low learning rate)."""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning.reducers import SumReducer

import vse_losses
from vse_losses import CollapseAlarm, CollapseWarning
from vse_losses.collapse import signals


def _cos(u, v):
    return float(u @ v) / (float(u.norm()) * float(v.norm()))


def _loop_signals(x, y, labels, ref_labels, self_ref):
    """spread, ref_spread and gap by explicit loops over every pair, float64."""
    B, M = x.shape[0], y.shape[0]

    def spread(z):
        n = z.shape[0]
        sims = [_cos(z[i], z[j]) for i in range(n) for j in range(n) if i != j]
        return 1 - sum(sims) / len(sims)

    pos, neg = [], []
    for i in range(B):
        for j in range(M):
            if self_ref and i == j:
                continue
            (pos if labels[i] == ref_labels[j] else neg).append(_cos(x[i], y[j]))
    gap = sum(pos) / len(pos) - sum(neg) / len(neg) if pos and neg else math.nan
    return spread(x), (math.nan if self_ref else spread(y)), gap


@pytest.mark.parametrize("form", ["paired", "labels", "one_modality"])
def test_signals_match_explicit_loops(form):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64) + 0.5
    y = torch.randn(7 if form == "paired" else 6, 5, generator=g, dtype=torch.float64)
    if form == "paired":
        got = signals(x, y)
        want = _loop_signals(x, y, list(range(7)), list(range(7)), False)
    elif form == "labels":
        lab, ref = torch.tensor([0, 1, 1, 2, 3, 3, 3]), torch.tensor([1, 0, 3, 3, 4, 1])
        got = signals(x, lab, ref_emb=y, ref_labels=ref)
        want = _loop_signals(x, y, lab.tolist(), ref.tolist(), False)
    else:
        lab = torch.tensor([0, 0, 1, 2, 2, 2, 5])
        got = signals(x, lab)
        want = _loop_signals(x, x, lab.tolist(), lab.tolist(), True)
    for name, w in zip(("spread", "ref_spread", "gap"), want):
        if math.isnan(w):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(w, abs=1e-12), name


def _two_rows(cos, dtype=torch.float64):
    """Two unit rows at cosine ``cos``: a modality whose spread is exactly 1 − cos."""
    s = math.sqrt(max(0.0, 1 - cos * cos))
    return torch.tensor([[1.0, 0.0], [cos, s]], dtype=dtype)


def _collapsed(B=8, D=4, noise=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(D, generator=g), torch.randn(D, generator=g)
    return u + noise * torch.randn(B, D, generator=g), v + noise * torch.randn(B, D, generator=g)


def _healthy(B=8, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def test_fires_once_at_the_end_of_the_window():
    alarm = CollapseAlarm(window=5, margin=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fired = [alarm.update(*_collapsed(seed=s)) for s in range(20)]
    assert fired == [False] * 4 + [True] + [False] * 15
    assert alarm.fired and alarm.fired_step == 5 and alarm.steps == 20
    collapse = [w for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(collapse) == 1 and str(collapse[0].message) == alarm.message
    assert collapse[0].filename == __file__  # stacklevel: the caller's line
    for words in ("SHToMHWarmup", "learning rate", "LpViolationLoss", "TopKViolationLoss", "margin 0.2"):
        assert words in alarm.message


def test_window_edge_and_interruptions():
    alarm = CollapseAlarm(window=4, warn=False)
    for _ in range(3):  # window − 1 collapsed steps ...
        assert not alarm.update(*_collapsed())
    assert alarm.run == 3
    alarm.update(*_healthy())  # ... broken by a healthy one
    assert alarm.run == 0
    for _ in range(3):
        assert not alarm.update(*_collapsed())
    one_row = _collapsed(B=1)
    assert not alarm.update(*one_row) and alarm.run == 3  # a single row neither counts nor breaks
    assert alarm.update(*_collapsed())  # the 4th collapsed step in a row
    assert alarm.fired_step == 9


@pytest.mark.parametrize("tol", [0.01, 0.2])
def test_tol_edge(tol):
    """A step is collapsed iff every signal is ≤ tol: spread just below and just above tol."""
    for delta, collapsed in ((-1e-9, True), (1e-9, False)):
        cos = 1 - (tol + delta)
        x = _two_rows(cos)
        y = x.clone()  # the same spread; gap: mean of the positives (1) − of the negatives (cos)
        alarm = CollapseAlarm(window=1, tol=tol, warn=False)
        got = signals(x, y)
        assert got["spread"] == pytest.approx(tol + delta, abs=1e-12)
        assert got["gap"] == pytest.approx(tol + delta, abs=1e-12)
        assert alarm.update(x, y) == collapsed


def test_gap_edge():
    """Two clusters per modality, the positives within a cluster: spread 2/3·(1 − c), gap 1 − c, so a
    tol between them is decided by the gap alone."""
    c = 0.9
    x = torch.cat([_two_rows(c)[:1]] * 2 + [_two_rows(c)[1:]] * 2)
    labels = torch.tensor([0, 0, 1, 1])
    got = signals(x, labels, ref_emb=x.clone(), ref_labels=labels)
    assert got["spread"] == pytest.approx(2 / 3 * (1 - c), abs=1e-12)
    assert got["gap"] == pytest.approx(1 - c, abs=1e-12)
    for tol, collapsed in ((0.08, False), (1 - c + 1e-9, True)):
        alarm = CollapseAlarm(window=1, tol=tol, warn=False)
        assert alarm.update(x, labels, ref_emb=x.clone(), ref_labels=labels) == collapsed


def test_no_effect_on_gradients():
    x, y = _healthy(B=6, D=3)
    grads = []
    for watch in (False, True):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = vse_losses.MaxViolationLoss()(xr, yr)
        if watch:
            CollapseAlarm(window=1, warn=False).update(xr, yr)
        loss.backward()
        grads.append((xr.grad, yr.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_state_dict_round_trip():
    alarm = CollapseAlarm(window=2, warn=False)
    for _ in range(3):
        alarm.update(*_collapsed())
    again = CollapseAlarm(window=2, warn=False)
    again.load_state_dict(alarm.state_dict())
    assert again.fired_step == 2 and again.message == alarm.message and again.steps == 3
    assert not any(again.update(*_collapsed()) for _ in range(5))  # once per run, across a resume


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 0}, "window"),
        ({"window": 2.0}, "window"),
        ({"window": True}, "window"),
        ({"tol": 1.0}, "tol"),
        ({"tol": -0.1}, "tol"),
        ({"tol": float("nan")}, "tol"),
        ({"margin": -1}, "margin"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CollapseAlarm(**kwargs)


def test_bad_inputs():
    alarm = CollapseAlarm()
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="2-D"):
        alarm.update(torch.randn(4, 3, 2), x)
    with pytest.raises(ValueError, match="different sizes"):
        alarm.update(x, torch.randn(4, 5))
    with pytest.raises(ValueError, match="labels"):
        alarm.update(x, torch.tensor([0, 1]), ref_emb=x)
    with pytest.raises(ValueError, match="one modality"):
        alarm.update(x)
    assert alarm.steps == 0  # rejected calls are not steps


def _train(loss_cls, lr, steps=150, seed=0):
    """A tiny two-tower model on features with a shared latent (images and captions of 128 items),
    trained by Adam with the loss summed over the batch; the alarm watches every step."""
    torch.manual_seed(seed)
    n, d_in = 128, 32
    latent = torch.randn(n, 8)
    images = latent @ torch.randn(8, d_in) + torch.randn(n, d_in)
    captions = latent @ torch.randn(8, d_in) + torch.randn(n, d_in)

    def tower():
        return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, 16))

    f_img, f_cap = tower(), tower()
    opt = torch.optim.Adam(list(f_img.parameters()) + list(f_cap.parameters()), lr=lr)
    loss_fn = loss_cls(reducer=SumReducer())
    alarm = CollapseAlarm(window=20, margin=0.2)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, n, (32,))
        x, y = f_img(images[ids]), f_cap(captions[ids])
        loss = loss_fn(x, ids, ref_emb=y, ref_labels=ids)  # an item drawn twice is not its own negative
        opt.zero_grad()
        loss.backward()
        opt.step()
        alarm.update(x, ids, ref_emb=y, ref_labels=ids)
        n_pos = int((ids[:, None] == ids[None, :]).sum())  # positive pairs: an item drawn k times gives k²
        losses.append(loss.item() / n_pos)
    with torch.no_grad():  # retrieval over all items: R@1 of images → captions
        r1 = (F.normalize(f_img(images)) @ F.normalize(f_cap(captions)).T).argmax(1).eq(torch.arange(n)).float().mean()
    return alarm, losses, float(r1)  # losses: per positive pair


def test_real_collapse_fires():
    """MH from random weights at a high learning rate: the plateau, 2·margin per pair."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alarm, losses, _ = _train(vse_losses.MaxViolationLoss, lr=0.05)
    assert alarm.fired and len([w for w in caught if issubclass(w.category, CollapseWarning)]) == 1
    assert alarm.fired_step < 100
    # the plateau itself, measured without the alarm: 2·margin per positive pair
    assert sum(losses[-20:]) / 20 == pytest.approx(2 * 0.2, rel=0.01)


@pytest.mark.parametrize(
    "loss_cls, lr",
    [(vse_losses.SumHingeLoss, 0.05), (vse_losses.SumHingeLoss, 0.003), (vse_losses.MaxViolationLoss, 0.003)],
)
def test_healthy_training_never_fires(loss_cls, lr):
    alarm, _, r1 = _train(loss_cls, lr=lr)
    assert not alarm.fired and alarm.run == 0
    assert r1 > 0.2  # it learned (chance: 1/128)
