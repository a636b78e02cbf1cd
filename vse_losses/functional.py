"""The VSE++ ranking losses as functions (like ``torch.nn.functional``).

Each function returns the loss of one call; the loss classes (``vse_losses.losses``) are the same
mathematics with PML's call forms, reducers and statistics. For a positive pair ``(a, p)`` the
violation vectors are

    i2t:  h_n = [α − S[a, p] + S[a, n]]_+   over the negatives n of row a,
    t2i:  h_n = [α − S[a, p] + S[n, p]]_+   over the negatives n of column p,

and each direction gives one loss term, a norm of its violation vector (:class:`Norm`):
``sum_hinge_loss`` ‖h‖₁ (the paper's eq. 5), ``max_violation_loss`` ‖h‖∞ (eq. 6),
``top_k_violation_loss`` the k largest, ``lp_violation_loss`` ‖h‖_p, ``mixed_violation_loss``
(1−λ)‖h‖₁ + λ‖h‖∞; on the temperature axis ``log_sum_exp_violation_loss`` τ·log(1 + Σ exp(v/τ))
of the raw violations v and ``info_nce_loss`` (CLIP's loss). ``docs/design.md`` has the whole
picture.

Arguments common to every loss function:

    img: (B, D) image embeddings (or any first modality); ``None`` when ``scores`` is given.
    cap: (M, D) caption embeddings, rows aligned with ``img`` unless labels say otherwise;
        ``None`` for one modality (then ``labels`` are required).
    scores: (B, M) precomputed similarities, larger = closer (cross-attention models); the terms
        then come from the matrix itself: ``similarity`` and an ``impl`` other than ``"auto"`` /
        ``"dense"`` do not apply (``ValueError``).
    labels, ref_labels: (B,), (M,) integer labels; ``(a, p)`` is positive iff they are equal.
        ``ref_labels`` omitted means the same labels as ``img`` (rows aligned).
    margin: α ≥ 0 (0.2 in the paper).
    directions: ``"both"`` (default), ``"i2t"`` or ``"t2i"``.
    reduction: ``"mean"`` over terms (default), ``"sum"`` (the original VSE++ summed loss), ``"none"``.
    impl: ``"auto"``, ``"dense"``, ``"chunked"`` or ``"triton"`` — the same function.
    similarity: ``"cosine"`` (default, normalises first), ``"dot"``, or ``"order"``: the order
        embeddings' −‖max(0, cap_j − img_i)‖₂ (``vse_losses.order``; impl ``"auto"``, ``"dense"`` or
        ``"chunked"``: it has no Triton kernel), the terms then computed from its score matrix.
    distributed: negatives from every rank of the initialised ``torch.distributed`` group
        (``vse_losses.distributed``): each rank passes its local batch and gets its share, so that
        the mean over ranks of the values, and DDP's average of the gradients, are those of one
        process on the concatenated batch; ``reduction="none"`` gives this rank's terms (i2t terms
        of its rows, then t2i terms of its columns), unscaled. World size 1: plain behaviour.
Returns: a scalar, or the (n_terms,) terms for ``reduction="none"`` (i2t terms first).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import _checks
from . import distributed as _dist
from .norms import Norm, lp_norm, smooth_max, violation_norm
from .order import order_scores
from .pairs import pair_masks, positive_pairs, resolve_labels
from .planner import (
    distributed_terms,
    nan_guard,
    query_violation_terms,
    selected_hinge_sum,
    violation_terms,
    violation_terms_from_scores,
)

__all__ = [
    "Norm",
    "positive_pairs",
    "pair_masks",
    "violation_norm",
    "violation_terms",
    "violation_terms_from_scores",
    "query_violation_terms",
    "sum_hinge_loss",
    "max_violation_loss",
    "top_k_violation_loss",
    "lp_violation_loss",
    "mixed_violation_loss",
    "log_sum_exp_violation_loss",
    "info_nce_loss",
    "order_scores",
    # the building blocks, importable from here as they were before the planner existed
    "resolve_labels",
    "lp_norm",
    "smooth_max",
    "nan_guard",
    "selected_hinge_sum",
    "distributed_terms",
]


def _loss(
    norm: Norm, img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity, distributed
) -> torch.Tensor:
    margin = _checks.check_margin(margin)
    _checks.check_choice("directions", directions, _checks.DIRECTIONS)
    _checks.check_choice("reduction", reduction, _checks.REDUCTIONS)
    _checks.check_choice("impl", impl, _checks.IMPLS)
    _checks.check_choice("similarity", similarity, ("cosine", "dot", "order"))
    if scores is not None:
        if img is not None or cap is not None:
            raise ValueError("pass either embeddings (img, cap) or scores=, not both")
        if impl not in ("auto", "dense") or similarity != "cosine":
            raise ValueError(
                f"scores= are the similarities themselves, computed from the matrix as given: "
                f"impl={impl!r} and similarity={similarity!r} do not apply (leave them at their defaults)"
            )
        _checks.check_scores(scores, labels, ref_labels)
        if distributed and _dist.world_size() > 1:
            raise ValueError(
                "distributed=True needs the embeddings (img, cap) to gather them; a precomputed scores= "
                "matrix cannot be extended to other ranks' negatives: compute the (local × global) scores "
                "yourself, or use distributed=False"
            )
        B, M = scores.shape
        lab, ref_lab = resolve_labels(labels, ref_labels, B, M, False, scores.device)
        pos, neg = pair_masks(lab, ref_lab, False)
        terms, _ = violation_terms_from_scores(scores, pos, neg, margin=margin, norm=norm, directions=directions)
        guard = nan_guard(scores, None)
        return _reduce(terms + guard, reduction, lambda: guard)
    if img is None:
        raise ValueError("pass image embeddings img (B, D), or a score matrix as scores=")
    _checks.check_inputs(img, labels, cap, ref_labels, names=("img", "labels", "cap", "ref_labels"))
    if similarity == "order":
        return _order_loss(norm, img, cap, labels, ref_labels, margin, directions, reduction, impl, distributed)
    if distributed and _dist.world_size() > 1:  # ValueError without a process group
        x, y = img, cap
        if similarity == "cosine":  # normalise locally, row by row, before gathering
            x = F.normalize(x, dim=1)
            y = None if y is None else F.normalize(y, dim=1)
        terms, _, batch = distributed_terms(
            x, y, labels, ref_labels, margin=margin, norm=norm, directions=directions, impl=impl
        )
        if reduction == "none":
            return terms + batch.guard()
        # local queries against every rank's batch: the ranks' losses sum to W × the global loss
        return _dist.reduce_terms(terms, (reduction,), batch.world) + batch.guard()
    terms, _ = violation_terms(
        img,
        cap,
        labels=labels,
        ref_labels=ref_labels,
        margin=margin,
        norm=norm,
        directions=directions,
        impl=impl,
        cosine=similarity == "cosine",
        guard=True if reduction == "none" else "sum",
        anchors=False,
    )
    return _reduce(terms, reduction, lambda: nan_guard(img, cap))


def _order_loss(norm, img, cap, labels, ref_labels, margin, directions, reduction, impl, distributed):
    """The terms from the order score matrix (dense terms, the scores by ``impl``)."""
    if distributed and _dist.world_size() > 1:
        raise ValueError(
            "similarity='order' with distributed=True: use the loss class, "
            "e.g. MaxViolationLoss(distance=OrderSimilarity(), distributed=True)"
        )
    self_ref = cap is None
    S = order_scores(img, img if self_ref else cap, impl)
    lab, ref_lab = resolve_labels(labels, ref_labels, S.shape[0], S.shape[1], self_ref, S.device)
    pos, neg = pair_masks(lab, ref_lab, self_ref)
    terms, _ = violation_terms_from_scores(S, pos, neg, margin=margin, norm=norm, directions=directions)
    guard = nan_guard(img, cap)
    return _reduce(terms + guard, reduction, lambda: guard)


def _reduce(terms: torch.Tensor, reduction: str, zero: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``terms`` reduced; ``zero()``: the loss when there is no term (built only then: at small
    batches every operation counts)."""
    if reduction == "none":
        return terms
    if terms.numel() == 0:  # no positive pair: 0 with zero gradients, as PML's losses
        return zero() + 0.0  # + 0.0 turns the −0 of a negative sum into 0
    return terms.sum() if reduction == "sum" else terms.mean()


def sum_hinge_loss(
    img=None,
    cap=None,
    *,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """Sum of hinges (the paper's eq. 5): each term is Σ_n [α − s(a,p) + s_n]_+ over the negatives.
    Arguments: see the module docstring."""
    return _loss(
        Norm("sum"), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity, distributed
    )


def max_violation_loss(
    img=None,
    cap=None,
    *,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """Max of hinges, VSE++ (the paper's eq. 6): each term is max_n [α − s(a,p) + s_n]_+.
    Arguments: see the module docstring."""
    return _loss(
        Norm("max"), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity, distributed
    )


def top_k_violation_loss(
    img=None,
    cap=None,
    *,
    k: int,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """Sum of the k largest hinges (Ky Fan k-norm): k=1 is MH, k ≥ #negatives is SH.
    ``k``: an integer ≥ 1; the other arguments: see the module docstring."""
    return _loss(
        Norm("topk", k=k),
        img,
        cap,
        scores,
        labels,
        ref_labels,
        margin,
        directions,
        reduction,
        impl,
        similarity,
        distributed,
    )


def lp_violation_loss(
    img=None,
    cap=None,
    *,
    p: float,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """ℓp norm of the hinges, (Σ_n h_n^p)^{1/p}: p=1 is SH, p=∞ is MH.
    ``p``: a number ≥ 1 (``float('inf')`` allowed); the other arguments: see the module docstring."""
    return _loss(
        Norm("lp", p=p),
        img,
        cap,
        scores,
        labels,
        ref_labels,
        margin,
        directions,
        reduction,
        impl,
        similarity,
        distributed,
    )


def mixed_violation_loss(
    img=None,
    cap=None,
    *,
    mix: float,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """(1−λ)·SH + λ·MH per term, λ = ``mix`` in [0, 1]: the SH→MH warm-up of VSE∞/ADAPT.
    The other arguments: see the module docstring."""
    return _loss(
        Norm("mix", mix=mix),
        img,
        cap,
        scores,
        labels,
        ref_labels,
        margin,
        directions,
        reduction,
        impl,
        similarity,
        distributed,
    )


def log_sum_exp_violation_loss(
    img=None,
    cap=None,
    *,
    temperature,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.2,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """Smoothed max violation: each term is τ·log(1 + Σ_n exp((α − s(a,p) + s_n)/τ)); τ → 0 is MH.
    ``temperature``: τ > 0, a number or a 0-dim tensor (may require grad); the other arguments:
    see the module docstring."""
    return _loss(
        Norm("lse", temperature=_checks.check_temperature(temperature)),
        img,
        cap,
        scores,
        labels,
        ref_labels,
        margin,
        directions,
        reduction,
        impl,
        similarity,
        distributed,
    )


def info_nce_loss(
    img=None,
    cap=None,
    *,
    temperature,
    scores=None,
    labels=None,
    ref_labels=None,
    margin=0.0,
    directions="both",
    reduction="mean",
    impl="auto",
    similarity="cosine",
    distributed=False,
) -> torch.Tensor:
    """InfoNCE (CLIP's loss): each term is log(1 + Σ_n exp((s_n − s(a,p))/τ)), −log of the positive's
    softmax; the paired call with ``reduction="mean"`` is ½(CE(S/τ, arange) + CE(Sᵀ/τ, arange)).
    ``temperature``: τ > 0, a number or a 0-dim tensor (may require grad); the other arguments:
    see the module docstring (``margin`` defaults to 0: InfoNCE itself)."""
    return _loss(
        Norm("infonce", temperature=_checks.check_temperature(temperature)),
        img,
        cap,
        scores,
        labels,
        ref_labels,
        margin,
        directions,
        reduction,
        impl,
        similarity,
        distributed,
    )
