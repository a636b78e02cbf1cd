"""A collapse alarm: warns once when training has fallen onto the plateau where every embedding of a
modality sits at one point.

On that plateau (MH from a poor start, or a learning rate too high) the image embeddings meet at one
point and the caption embeddings at one point, so every positive pair and every negative pair has
the same similarity: the positive meets its hardest negative, every violation equals the margin,
and the summed MH loss sits at 2·margin per positive pair (51.2 at B = 128, margin 0.2). Its
gradient no longer separates anything: from random weights training rarely leaves it, from a
pretrained start it may, after epochs (the example's MH on the pretrained CNN escapes in its third).

:class:`CollapseAlarm` reads each step's embeddings, in O((B + M)·D) and without gradient, and
recognises the plateau by three signals over a window of consecutive steps (cosine similarities,
x̂ = x/‖x‖; a modality's rows and a pair's labels as in the losses):

    spread      1 − mean of x̂_i·x̂_j over the pairs i ≠ j of the image rows
                (= 1 − (‖Σ x̂_i‖² − Σ ‖x̂_i‖²) / (B(B − 1)))
    ref_spread  the same of the caption rows (one modality: not measured)
    gap         mean x̂_a·ŷ_p over the positive pairs − mean x̂_i·ŷ_j over the negative pairs
                (sums per label: Σ_l (Σ_{a∈l} x̂_a)·(Σ_{p∈l} ŷ_p), nothing B×M)

A step is *collapsed* when ``spread ≤ tol``, ``ref_spread ≤ tol`` and ``|gap| ≤ tol``. A modality at
one point (spread 0) makes every cross-modal similarity the same number, so the positive meets its
hardest negative and every hardest violation is the margin; the gap checks the meeting itself.
Healthy training has spreads near 1; a network at its random initialisation maps inputs close
together (spreads of 0.05–0.2 in the tests) but leaves that within a few steps, while a collapsed run
sits at 1e-4 and below. The alarm fires when ``window`` consecutive steps are collapsed.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from . import _checks
from .pairs import resolve_labels

__all__ = ["CollapseAlarm", "CollapseWarning"]


class CollapseWarning(UserWarning):
    """The embeddings have collapsed to one point per modality (:class:`CollapseAlarm`)."""


class CollapseAlarm:
    """Warn once when the embeddings collapse (the module docstring has the signals).

    Args:
        window: how many consecutive collapsed steps fire the alarm (an integer ≥ 1; 50).
        tol: the threshold of ``spread``, ``ref_spread`` and ``|gap|`` (a number in [0, 1); 0.01,
            i.e. a mean pairwise cosine similarity of at least 0.99 in each modality).
        margin: the loss's margin, for the message only (None: not stated).
        warn: issue a :class:`CollapseWarning` when the alarm fires (False: only the flag and the
            return value, for a training loop that reports it its own way).

    One line in a PML-style loop, after the loss (no effect on gradients)::

        alarm = CollapseAlarm(margin=0.2)
        ...
        loss = loss_fn(img_emb, cap_emb)
        alarm.update(img_emb, cap_emb)          # or (embeddings, labels, ref_emb=..., ref_labels=...)

    ``update`` takes the losses' call forms (paired, labels, one modality) and returns True at the
    step the alarm fires, and only then. Afterwards ``fired`` is True, ``fired_step`` the step
    (counted from 1) and ``message`` the text of the warning. ``last`` holds the latest step's
    signals; ``run`` the current number of consecutive collapsed steps. A step where a modality has
    a single row neither counts nor breaks the run; a gap that is undefined (no positive or no
    negative pair) is left out of that step's test. ``state_dict()``/``load_state_dict()`` save
    and restore the alarm (resume).
    """

    def __init__(self, window: int = 50, tol: float = 0.01, margin: float | None = None, warn: bool = True):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1 (consecutive steps), got {window!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= tol < 1.0:
            raise ValueError(f"tol must be a number in [0, 1) (e.g. 0.01), got {tol!r}")
        self.window = window
        self.tol = float(tol)
        self.margin = None if margin is None else _checks.check_margin(margin)
        self.warn = bool(warn)
        self.steps = 0
        self.run = 0
        self.fired_step: int | None = None
        self.last: dict[str, float] = {}
        self.message: str | None = None  # the warning's text, once fired

    @property
    def fired(self) -> bool:
        return self.fired_step is not None

    def update(self, embeddings, labels=None, ref_emb=None, ref_labels=None) -> bool:
        """Read one step's embeddings; True at the step the alarm fires (once per alarm).

        embeddings: (B, D); ref_emb: (M, D) or None (one modality: labels required); labels (B,),
        ref_labels (M,) integers as in the losses; the paired form ``update(img_emb, cap_emb)``
        pairs row a with row a. Cost O((B + M)·D), one device synchronisation."""
        labels, ref_emb = _checks.split_paired_call(labels, ref_emb, caller="update")
        _checks.check_inputs(embeddings, labels, ref_emb, ref_labels)
        self.last = signals(embeddings, labels, ref_emb, ref_labels)
        self.steps += 1
        if math.isnan(self.last["spread"]) or (ref_emb is not None and math.isnan(self.last["ref_spread"])):
            return False  # a single row: the run neither grows nor breaks
        collapsed = all(abs(v) <= self.tol for v in self.last.values() if not math.isnan(v))
        self.run = self.run + 1 if collapsed else 0
        if self.fired or self.run < self.window:
            return False
        self.fired_step = self.steps
        self.message = self._message()
        if self.warn:
            warnings.warn(self.message, CollapseWarning, stacklevel=2)
        return True

    def _message(self) -> str:
        s = self.last
        spreads = f"spread {s['spread']:.2g}" + (
            "" if math.isnan(s["ref_spread"]) else f" (images), {s['ref_spread']:.2g} (captions)"
        )
        margin = "the margin" if self.margin is None else f"the margin {self.margin:g}"
        return (
            f"the embeddings have collapsed at step {self.fired_step}: for {self.window} steps each modality has sat "
            f"at one point ({spreads}; positive-negative similarity gap {s['gap']:.2g}; all within {self.tol:g}), so "
            f"the positive meets its hardest negative and every violation equals {margin} (summed MH: 2·margin "
            "per pair). Training may stay on this plateau for epochs or for good: an SH→MH warm-up "
            "(vse_losses.SHToMHWarmup), a lower learning rate, or LpViolationLoss / TopKViolationLoss avoid it"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "run": self.run, "fired_step": self.fired_step, "message": self.message}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.run = int(state["run"])
        self.fired_step = None if state["fired_step"] is None else int(state["fired_step"])
        self.message = state.get("message")


def signals(embeddings, labels=None, ref_emb=None, ref_labels=None) -> dict[str, float]:
    """``spread``, ``ref_spread`` and ``gap`` of one step (the module docstring); NaN where
    undefined. Computed in float32 (float64 for float64 inputs), O((B + M)·D)."""
    labels, ref_emb = _checks.split_paired_call(labels, ref_emb, caller="signals")
    with torch.no_grad():
        return _signals(embeddings, labels, ref_emb, ref_labels)


def _signals(embeddings, labels, ref_emb, ref_labels) -> dict[str, float]:
    wide = torch.promote_types(embeddings.dtype, torch.float32)
    self_ref = ref_emb is None
    x = F.normalize(embeddings.detach().to(wide), dim=1)
    y = x if self_ref else F.normalize(ref_emb.detach().to(wide), dim=1)
    B, M = x.shape[0], y.shape[0]
    lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    sx, sy = x.sum(0), y.sum(0)
    nx2, ny2 = x.square().sum(), y.square().sum()  # Σ‖x̂_i‖²: B, less any zero rows
    if labels is None:  # paired: pair a is (a, a)
        pos_sum, pos_n = (x * y).sum(), torch.tensor(float(B), dtype=wide, device=x.device)
    else:  # per label l: (Σ_{a∈l} x̂_a)·(Σ_{p∈l} ŷ_p) and n_x(l)·n_y(l)
        ids, inv = torch.unique(torch.cat([lab, ref_lab]), return_inverse=True)
        gx = x.new_zeros(ids.numel(), x.shape[1]).index_add_(0, inv[:B], x)
        gy = y.new_zeros(ids.numel(), y.shape[1]).index_add_(0, inv[B:], y)
        cx = torch.bincount(inv[:B], minlength=ids.numel()).to(wide)
        cy = torch.bincount(inv[B:], minlength=ids.numel()).to(wide)
        pos_sum, pos_n = (gx * gy).sum(), (cx * cy).sum()
    all_sum, all_n = sx @ sy, torch.tensor(float(B * M), dtype=wide, device=x.device)
    if self_ref:  # a row is not paired with itself
        pos_sum, pos_n, all_sum, all_n = pos_sum - nx2, pos_n - B, all_sum - nx2, all_n - B
    neg_sum, neg_n = all_sum - pos_sum, all_n - pos_n
    values = torch.stack(
        [
            1 - (sx @ sx - nx2) / (B * (B - 1)) if B > 1 else x.new_tensor(math.nan),
            1 - (sy @ sy - ny2) / (M * (M - 1)) if M > 1 and not self_ref else x.new_tensor(math.nan),
            pos_sum / pos_n - neg_sum / neg_n,  # 0/0 = NaN without positive or negative pairs
        ]
    ).tolist()
    return dict(zip(("spread", "ref_spread", "gap"), values))
