"""The mathematics of the VSE++ ranking losses, in plain torch (like ``torch.nn.functional``).

Notation (DESIGN.md §1). ``x`` (B, D) are the queries of the image→caption direction (images),
``y`` (M, D) the captions, ``S = x yᵀ`` (B, M) their similarities. ``(a, p)`` is a positive pair
iff ``labels[a] == ref_labels[p]`` (without labels: ``a == p``); every other pair is a negative,
except that a sample is never paired with itself when ``y`` is ``x`` (one modality).

For a positive pair ``(a, p)`` the violation vectors are

    i2t:  h_n = [α − S[a, p] + S[a, n]]_+   over the negatives n of row a,
    t2i:  h_n = [α − S[a, p] + S[n, p]]_+   over the negatives n of column p,

and each direction gives one loss term, a norm of its violation vector:

    sum   ‖h‖₁                          SumHingeLoss, the paper's eq. 5 (SH)
    max   ‖h‖∞                          MaxViolationLoss, eq. 6 (MH)
    topk  sum of the k largest h        TopKViolationLoss: k=1 is MH, k ≥ #negatives is SH
    lp    (Σ h^p)^{1/p}                 LpViolationLoss: p=1 is SH, p=∞ is MH
    mix   (1−λ)‖h‖₁ + λ‖h‖∞            MixedViolationLoss, the SH→MH warm-up

Padding ``h`` with zeros changes none of these norms, which is why masked-out entries are simply 0.

Three implementations compute the same terms (``impl``): ``dense`` builds S and the masks;
``chunked`` (torch, any device) and ``triton`` (CUDA) never hold anything B×M (see ``vse_losses.ops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import _checks
from . import distributed as _dist
from .ops import hinge_norm_pairs, hinge_norm_rows, negative_topk, resolve_impl
from .ops.max_violation_paired import max_violation_paired
from .ops.row_dots import row_dots
from .ops.tiling import SameLabel

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
]


@dataclass(frozen=True)
class Norm:
    """Which norm of the violation vector makes a loss term (see the module docstring).

    The constructor canonicalises the ends of each continuum, so that they are computed by
    exactly the same code as SH and MH: ``topk`` with k=1, ``lp`` with p=∞ and ``mix`` with
    λ=1 become ``max``; ``lp`` with p=1 and ``mix`` with λ=0 become ``sum``.
    """

    kind: str
    k: int = 1
    p: float = 1.0
    mix: float = 0.0

    def __post_init__(self) -> None:
        kind = _checks.check_choice("norm", self.kind, ("sum", "max", "topk", "lp", "mix"))
        if kind == "topk" and _checks.check_k(self.k) == 1:
            kind = "max"
        if kind == "lp":
            p = _checks.check_p(self.p)
            kind = "sum" if p == 1.0 else "max" if p == float("inf") else "lp"
        if kind == "mix":
            mix = _checks.check_mix(self.mix)
            kind = "sum" if mix == 0.0 else "max" if mix == 1.0 else "mix"
        object.__setattr__(self, "kind", kind)

    @property
    def selection_k(self) -> int:
        """How many hardest negatives per row/column the norm needs (0: it needs all of them)."""
        return {"max": 1, "topk": self.k, "mix": 1}.get(self.kind, 0)

    @property
    def hinge_p(self) -> float:
        """The p of the ℓp part of the norm (0: it has none)."""
        return {"sum": 1.0, "lp": self.p, "mix": 1.0}.get(self.kind, 0.0)

    @property
    def selection_weight(self) -> float:
        """Weight of the hardest-negatives part of the term (λ of the mix, else 1)."""
        return self.mix if self.kind == "mix" else 1.0

    @property
    def hinge_weight(self) -> float:
        """Weight of the ℓp part of the term (1 − λ of the mix, else 1)."""
        return 1.0 - self.mix if self.kind == "mix" else 1.0


# --------------------------------------------------------------------------------------------
# Pairs and masks
# --------------------------------------------------------------------------------------------


def resolve_labels(
    labels: Optional[torch.Tensor],
    ref_labels: Optional[torch.Tensor],
    B: int,
    M: int,
    self_ref: bool,
    device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concrete integer labels for both sides; without labels row a pairs with column a."""
    if labels is None:
        if ref_labels is not None:
            raise ValueError("ref_labels were given without labels; pass labels for the embeddings too")
        if self_ref:
            raise ValueError(
                "one modality without labels has no positive pairs; pass labels, or pass the other "
                "modality as ref_emb (paired form: loss(img_emb, cap_emb))"
            )
        if B != M:
            raise ValueError(
                f"paired form needs as many captions as images (rows aligned), got {B} and {M}; "
                "pass labels and ref_labels to pair them otherwise"
            )
        idx = torch.arange(B, device=device)
        return idx, idx
    labels = labels.to(device)
    if ref_labels is None:
        if not self_ref and B != M:
            raise ValueError(
                f"ref_labels omitted, so labels are taken for both modalities, but there are {B} "
                f"embeddings and {M} ref_emb rows; pass ref_labels"
            )
        ref_labels = labels
    return labels, ref_labels.to(device)


def positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor, self_ref: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """All positive pairs ``(a, p)``, ``labels[a] == ref_labels[p]``, in row-major order.

    Enumerated through a sort of ``ref_labels``: O((B + M) log M + #pairs), nothing B×M.
    With ``self_ref`` the pairs ``(a, a)`` are left out.
    """
    a, p = SameLabel(ref_labels).entries(labels)
    if self_ref:
        keep = a != p
        a, p = a[keep], p[keep]
    return a, p  # rows ascend, and within a row the stable sort keeps the columns ascending


def pair_masks(labels: torch.Tensor, ref_labels: torch.Tensor, self_ref: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense (B, M) boolean masks of positive and negative pairs (dense implementation only)."""
    pos = labels[:, None] == ref_labels[None, :]
    if self_ref:
        eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        return pos & ~eye, ~pos & ~eye
    return pos, ~pos


# --------------------------------------------------------------------------------------------
# Norms of violation vectors
# --------------------------------------------------------------------------------------------


def violation_norm(h: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Norm of each row of ``h`` (..., n), ``h >= 0`` with non-negatives set to 0 → (...)."""
    if h.shape[-1] == 0:
        return h.sum(-1)
    if norm.kind == "sum":
        return h.sum(-1)
    if norm.kind == "max":
        # gather at argmax: ties go to the lowest index, as in every implementation
        return h.gather(-1, h.argmax(-1, keepdim=True)).squeeze(-1)
    if norm.kind == "topk":
        return torch.topk(h, min(norm.k, h.shape[-1]), dim=-1).values.sum(-1)
    if norm.kind == "lp":
        return lp_norm(h, norm.p)
    return (1.0 - norm.mix) * h.sum(-1) + norm.mix * violation_norm(h, Norm("max"))


def lp_norm(h: torch.Tensor, p: float) -> torch.Tensor:
    """(Σ h^p)^{1/p} along the last dim, scaled by the max first so nothing overflows.

    ‖h‖_p = m ‖h/m‖_p for any constant m > 0, so m is detached; where h = 0 everywhere the
    result is 0 and the gradient finite (‖h/1‖ with the sum replaced by 1 below 1e-30).
    """
    m = h.detach().amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    s = (h / m).pow(p).sum(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.where(s > 0, safe.pow(1.0 / p), torch.zeros_like(s)) * m.squeeze(-1)


# --------------------------------------------------------------------------------------------
# Loss terms
# --------------------------------------------------------------------------------------------


def violation_terms_from_scores(
    scores: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    *,
    margin: float,
    norm: Norm,
    directions: str = "both",
    pairs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense loss terms from a score matrix and boolean pair masks.

    scores: (B, M) similarities (larger = closer); pos_mask, neg_mask: (B, M) bool.
    Returns ``(terms, anchors)``: one term per positive pair and direction (i2t terms first),
    and for each the row index ``a`` of its pair.
    """
    S = scores.to(torch.promote_types(scores.dtype, torch.float32))
    a, p = pos_mask.nonzero(as_tuple=True) if pairs is None else pairs
    s_ap = S[a, p][:, None]
    neg = neg_mask.to(S.dtype)
    terms, anchors = [], []
    if directions in ("both", "i2t"):
        terms.append(violation_norm(F.relu(margin - s_ap + S[a]) * neg[a], norm))
        anchors.append(a)
    if directions in ("both", "t2i"):
        terms.append(violation_norm(F.relu(margin - s_ap + S[:, p].t()) * neg[:, p].t(), norm))
        anchors.append(a)
    return torch.cat(terms), torch.cat(anchors)


def violation_terms(
    x: torch.Tensor,
    y: Optional[torch.Tensor] = None,
    *,
    labels: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    margin: float = 0.2,
    norm: Norm = Norm("max"),
    directions: str = "both",
    impl: str = "auto",
    query_rows: Optional[Tuple[int, int]] = None,
    query_cols: Optional[Tuple[int, int]] = None,
    cosine: bool = False,
    guard: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Loss terms of embeddings whose similarity is the dot product ``x yᵀ`` (with ``cosine``,
    of the l2-normalised rows: the paired max violation then folds the norms into its kernels
    instead of normalising copies of x and y; everything else normalises first).

    x: (B, D); y: (M, D) or None (one modality: ``y = x``, labels required).
    labels: (B,) or None (paired: row a with column a); ref_labels: (M,) or None (= labels).
    Returns ``(terms, anchors)`` as :func:`violation_terms_from_scores`, computed by ``impl``;
    terms are float32 (float64 for float64 inputs).

    query_rows, query_cols: ``(start, stop)`` to compute only the i2t terms of the pairs whose
    row ``a`` is in ``[start, stop)`` and the t2i terms of those whose column ``p`` is in the
    column range, each still against every negative (the terms of one rank with
    ``distributed=True``; cost O((rows + cols)·(B + M)·D)). Then the anchors are the terms'
    query indices within their range: ``a − start`` for i2t terms, ``p − start`` for t2i terms.

    guard: add :func:`nan_guard` of x and y to every term (NaN/Inf in an input → NaN terms).
    """
    impl = resolve_impl(impl, x, x.shape[0] * (x if y is None else y).shape[0])
    if (impl == "triton" and y is not None and labels is None and query_rows is None and query_cols is None
            and directions == "both" and norm.kind == "max" and x.shape[0] <= 128):
        from .ops import triton_max_violation_small as small  # triton is importable: impl says so

        if small.usable(x, y):
            # the paired MH of a small batch, bound by launches rather than arithmetic: one kernel
            # forward (terms, anchors and the guard), one backward, nothing else
            return small.max_violation_small(x, y, margin, cosine, guard=guard)
    terms, anchors = _violation_terms(x, y, labels=labels, ref_labels=ref_labels, margin=margin, norm=norm,
                                      directions=directions, impl=impl, query_rows=query_rows,
                                      query_cols=query_cols, cosine=cosine)
    return (terms + nan_guard(x, y), anchors) if guard else (terms, anchors)


def _violation_terms(x, y, *, labels, ref_labels, margin, norm, directions, impl, query_rows, query_cols, cosine):
    """:func:`violation_terms` without the guard or the small-batch kernel; ``impl`` resolved."""
    self_ref = y is None
    B, M = x.shape[0], (x if y is None else y).shape[0]
    # paired form without labels: pair j is (j, j), known without enumerating it (no sort, no
    # search, nothing of data-dependent size, so no device synchronisation)
    paired = labels is None and not self_ref
    local = query_rows is None and query_cols is None
    # the paired max violation has its own O(B)-memory autograd Function (ops/max_violation_paired.py)
    fused_max = paired and local and impl != "dense" and norm.selection_k == 1
    fused_mh = fused_max and norm.kind == "max"  # MH itself, not the max part of a mix
    if cosine and not fused_mh:
        x = F.normalize(x, dim=1)
        y = None if self_ref else F.normalize(y, dim=1)
        cosine = False
    y = x if y is None else y
    labels, ref_labels = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    a, p = (labels, ref_labels) if paired else positive_pairs(labels, ref_labels, self_ref)
    if fused_mh:
        i2t, t2i = max_violation_paired(x, y, margin, cosine=cosine, impl=impl)
        kept = [t for t, d in ((i2t, "i2t"), (t2i, "t2i")) if directions in ("both", d)]
        return torch.cat(kept), torch.cat([a] * len(kept))
    if query_rows is not None or query_cols is not None:
        return query_violation_terms(
            x, y, labels, ref_labels, self_ref, (a, p), query_rows or (0, B), query_cols or (0, M),
            margin=margin, norm=norm, directions=directions, impl=impl,
        )
    if impl == "dense":
        wide = torch.promote_types(x.dtype, torch.float32)
        S = x.to(wide) @ y.to(wide).t()
        pos, neg = pair_masks(labels, ref_labels, self_ref)
        return violation_terms_from_scores(S, pos, neg, margin=margin, norm=norm, directions=directions, pairs=(a, p))

    s_ap = row_dots(x, y, impl=impl) if paired else row_dots(x, y, a, p, impl=impl)
    selection = None
    if fused_max:  # the mix: its max-violation part
        i2t, t2i = max_violation_paired(x, y, margin, cosine=False, impl=impl)
        selection = {"i2t": i2t, "t2i": t2i}
    elif norm.selection_k:
        # the hardest negatives of a row do not depend on which positive of the row is the pair
        with torch.no_grad():
            row_val, row_idx, col_val, col_idx = negative_topk(
                x, y, labels, ref_labels, self_ref, norm.selection_k, impl=impl, paired=paired
            )
        selection = {"i2t": (row_val, row_idx), "t2i": (col_val, col_idx)}
    hinge = None
    if norm.hinge_p:
        # one pass over the score tiles gives both directions' ℓp norms
        T1, T2 = hinge_norm_pairs(
            x, y, s_ap - margin, a, p, labels, ref_labels, self_ref, norm.hinge_p,
            do_i2t=directions != "t2i", do_t2i=directions != "i2t", impl=impl, paired=paired,
        )
        hinge = {"i2t": T1, "t2i": T2}
    terms, anchors = [], []
    for direction in ("i2t", "t2i"):
        if directions not in ("both", direction):
            continue
        # i2t: the queries are the rows x[a] against the keys y; t2i: the columns y[p] against x
        q_side, k_side = (x, y) if direction == "i2t" else (y, x)
        q_idx = a if direction == "i2t" else p
        parts = []
        if fused_max:
            parts.append(selection[direction] * norm.selection_weight)
        elif selection is not None:
            vals, idx = selection[direction]
            if not paired:  # the pairs' rows (paired: pair n is row n)
                vals, idx = vals[q_idx], idx[q_idx]
            # paired: every other column of a row (row of a column) is a negative
            complete = paired and norm.selection_k <= k_side.shape[0] - 1
            selected = selected_hinge_sum(q_side, k_side, vals, idx, s_ap, margin, complete,
                                          q_rows=None if paired else q_idx, impl=impl)
            parts.append(selected if norm.selection_weight == 1 else selected * norm.selection_weight)
        if hinge is not None:
            parts.append(hinge[direction] if norm.hinge_weight == 1 else hinge[direction] * norm.hinge_weight)
        terms.append(sum(parts[1:], parts[0]) if parts else torch.zeros_like(s_ap))
        anchors.append(a)
    return torch.cat(terms), torch.cat(anchors)


def query_violation_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    ref_labels: torch.Tensor,
    self_ref: bool,
    pairs: Tuple[torch.Tensor, torch.Tensor],
    rows: Tuple[int, int],
    cols: Tuple[int, int],
    *,
    margin: float,
    norm: Norm,
    directions: str,
    impl: str,
    scores=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The terms of the queries in ``rows`` (i2t) and ``cols`` (t2i) against every key.

    Each direction works on its block of queries only: i2t on ``x[rows]`` against ``y``, t2i
    on ``y[cols]`` against ``x`` (the transposed problem), so nothing outside the two blocks of
    ``S`` is computed. ``pairs`` are all positive pairs ``(a, p)``; ``scores(u, v)`` (dense
    only, default ``u vᵀ``) gives the similarities of rows of x to rows of y. Returns the terms
    and each term's query index within its range.
    A sample's pair with itself (one modality) has equal labels, so the label test alone
    excludes it from the negatives.
    """
    a, p = pairs
    wide = torch.promote_types(x.dtype, torch.float32)
    terms, anchors = [], []
    for direction in ("i2t", "t2i"):
        if directions not in ("both", direction):
            continue
        # i2t: queries x[a] against the keys y; t2i: queries y[p] against the keys x
        (lo, hi), q_side, k_side = (rows, x, y) if direction == "i2t" else (cols, y, x)
        q_lab, k_lab = (labels, ref_labels) if direction == "i2t" else (ref_labels, labels)
        q_all, k_all = (a, p) if direction == "i2t" else (p, a)
        keep = (q_all >= lo) & (q_all < hi)
        q_idx, k_idx = q_all[keep], k_all[keep]
        if impl == "dense":
            score = scores or (lambda u, v: u.to(wide) @ v.to(wide).t())
            S = score(x[lo:hi], y) if direction == "i2t" else score(x, y[lo:hi]).t()
            neg = (q_lab[lo:hi, None] != k_lab[None, :]).to(S.dtype)
            qi = q_idx - lo
            term = violation_norm(F.relu(margin - S[qi, k_idx][:, None] + S[qi]) * neg[qi], norm)
        else:
            s_ap = row_dots(q_side, k_side, q_idx, k_idx, impl=impl)
            term = torch.zeros_like(s_ap)
            if norm.selection_k:
                with torch.no_grad():
                    vals, idx, _, _ = negative_topk(
                        q_side[lo:hi], k_side, q_lab[lo:hi], k_lab, False, norm.selection_k, impl=impl
                    )
                selected = selected_hinge_sum(q_side, k_side, vals[q_idx - lo], idx[q_idx - lo], s_ap, margin,
                                              q_rows=q_idx, impl=impl)
                term = term + selected * norm.selection_weight
            if norm.hinge_p:
                hn = hinge_norm_rows(
                    q_side[q_idx], k_side, s_ap - margin, q_lab[q_idx], k_lab, torch.full_like(q_idx, -1),
                    norm.hinge_p, impl=impl,
                )
                term = term + hn * norm.hinge_weight
        terms.append(term)
        anchors.append(q_idx - lo)
    return torch.cat(terms), torch.cat(anchors)


def selected_hinge_sum(
    q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, s_ap: torch.Tensor, margin: float,
    complete: bool = False, q_rows: Optional[torch.Tensor] = None, impl: str = "chunked",
) -> torch.Tensor:
    """Σ_j [α − s_ap + q_n·keys[idx_nj]]_+ over the selected hardest negatives of each pair n.

    q: queries, row ``q_rows[n]`` for pair n (q_rows None: row n); idx, vals: (P, k) the pair's
    hardest negatives (found without gradient; vals = −inf where there are fewer than k);
    s_ap: (P,). The hinge is monotone, so the k largest hinges are the hinges of the k largest
    scores. The selected scores are recomputed by :func:`~vse_losses.ops.row_dots.row_dots`, so
    the backward is a scatter over the saved indices, O(P·k·D), with no copy of the rows kept.
    ``complete``: every pair is known to have k negatives (no −inf in vals). ``impl``: as
    :func:`~vse_losses.ops.row_dots.row_dots`.
    """
    P, k = idx.shape
    qi = q_rows
    if k > 1:
        qi = (torch.arange(P, device=idx.device) if q_rows is None else q_rows)[:, None].expand(P, k).reshape(-1)
    sel = row_dots(q, keys, qi, idx.reshape(-1), impl=impl).view(P, k)  # (P, k): q_n · keys[idx_nj]
    if not complete:
        sel = torch.where(vals == float("-inf"), torch.full_like(sel, float("-inf")), sel)
    h = F.relu(margin - s_ap[:, None] + sel)
    return h.squeeze(-1) if h.shape[-1] == 1 else h.sum(-1)


# --------------------------------------------------------------------------------------------
# The public functions
# --------------------------------------------------------------------------------------------


def _loss(
    norm: Norm,
    img: Optional[torch.Tensor],
    cap: Optional[torch.Tensor],
    scores: Optional[torch.Tensor],
    labels: Optional[torch.Tensor],
    ref_labels: Optional[torch.Tensor],
    margin: float,
    directions: str,
    reduction: str,
    impl: str,
    similarity: str,
    distributed: bool = False,
) -> torch.Tensor:
    margin = _checks.check_margin(margin)
    _checks.check_choice("directions", directions, _checks.DIRECTIONS)
    _checks.check_choice("reduction", reduction, _checks.REDUCTIONS)
    _checks.check_choice("impl", impl, _checks.IMPLS)
    _checks.check_choice("similarity", similarity, ("cosine", "dot"))
    world = _dist.world_size() if distributed else 1  # ValueError without a process group
    if scores is not None:
        if img is not None or cap is not None:
            raise ValueError("pass either embeddings (img, cap) or scores=, not both")
        if world > 1:
            raise ValueError(
                "distributed=True needs the embeddings (img, cap) to gather them; a precomputed scores= "
                "matrix cannot be extended to other ranks' negatives: compute the (local × global) scores "
                "yourself, or use distributed=False"
            )
        _checks.check_embeddings("scores", scores)
        B, M = scores.shape
        _checks.check_labels("labels", labels, B, "scores")
        _checks.check_labels("ref_labels", ref_labels, M, "scores (columns)")
        labels, ref_labels = resolve_labels(labels, ref_labels, B, M, False, scores.device)
        pos, neg = pair_masks(labels, ref_labels, False)
        terms, _ = violation_terms_from_scores(scores, pos, neg, margin=margin, norm=norm, directions=directions)
        guard = scores.sum(dtype=torch.float32) * 0
    else:
        if img is None:
            raise ValueError("pass image embeddings img (B, D), or a score matrix as scores=")
        if cap is None:
            _checks.check_embeddings("img", img)
        else:
            _checks.check_pair(img, cap)
        _checks.check_labels("labels", labels, img.shape[0], "img")
        _checks.check_labels("ref_labels", ref_labels, (img if cap is None else cap).shape[0], "cap")
        x, y = img, cap
        if world > 1:
            if similarity == "cosine":  # normalise locally, row by row, before gathering
                x = F.normalize(x, dim=1)
                y = None if y is None else F.normalize(y, dim=1)
            # local queries against every rank's batch; the ranks' losses sum to W × the global loss
            batch = _dist.gather_batch(x, y, labels, ref_labels)
            terms, _ = violation_terms(
                batch.x, batch.y, labels=batch.labels, ref_labels=batch.ref_labels, margin=margin, norm=norm,
                directions=directions, impl=impl, query_rows=batch.rows, query_cols=batch.cols,
            )
            guard = batch.guard()
            value = None if reduction == "none" else _dist.reduce_terms(terms, (reduction,), world)
            if value is not None:
                return value + guard
        else:
            terms, _ = violation_terms(
                x, y, labels=labels, ref_labels=ref_labels, margin=margin, norm=norm, directions=directions, impl=impl,
                cosine=similarity == "cosine", guard=True,
            )
            guard = None  # in the terms
    if guard is not None:
        terms = terms + guard
    if reduction == "none":
        return terms
    if terms.numel() == 0:  # no positive pair: 0 with zero gradients, as PML's losses
        return (nan_guard(img, cap) if guard is None else guard) + 0.0
    return terms.sum() if reduction == "sum" else terms.mean()


def nan_guard(x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
    """0·Σx (+ 0·Σy): a zero that is NaN when an input holds NaN/Inf, and ties both inputs to the
    graph so that their gradients are zero tensors rather than None when no term depends on them."""
    g = x.sum(dtype=torch.float32) * 0
    return g if y is None else g + y.sum(dtype=torch.float32) * 0


_DOC_ARGS = """
    img: (B, D) image embeddings (or any first modality); ``None`` when ``scores`` is given.
    cap: (M, D) caption embeddings, rows aligned with ``img`` unless labels say otherwise;
        ``None`` for one modality (then ``labels`` are required).
    scores: (B, M) precomputed similarities, larger = closer (cross-attention models); dense.
    labels, ref_labels: (B,), (M,) integer labels; ``(a, p)`` is positive iff they are equal.
        ``ref_labels`` omitted means the same labels as ``img`` (rows aligned).
    margin: α ≥ 0 (0.2 in the paper).
    directions: ``"both"`` (default), ``"i2t"`` or ``"t2i"``.
    reduction: ``"mean"`` over terms (default), ``"sum"`` (the original VSE++ summed loss), ``"none"``.
    impl: ``"auto"``, ``"dense"``, ``"chunked"`` or ``"triton"`` — the same function.
    similarity: ``"cosine"`` (default, normalises first) or ``"dot"``.
    distributed: negatives from every rank of the initialised ``torch.distributed`` group
        (``vse_losses.distributed``): each rank passes its local batch and gets its share, so that
        the mean over ranks of the values, and DDP's average of the gradients, are those of one
        process on the concatenated batch; ``reduction="none"`` gives this rank's terms (i2t terms
        of its rows, then t2i terms of its columns), unscaled. World size 1: plain behaviour.
Returns: a scalar, or the (n_terms,) terms for ``reduction="none"`` (i2t terms first)."""


def sum_hinge_loss(img=None, cap=None, *, scores=None, labels=None, ref_labels=None, margin=0.2,
                   directions="both", reduction="mean", impl="auto", similarity="cosine",
                   distributed=False) -> torch.Tensor:
    """Sum of hinges (the paper's eq. 5): each term is Σ_n [α − s(a,p) + s_n]_+ over the negatives.
    """
    return _loss(Norm("sum"), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity,
                 distributed)


def max_violation_loss(img=None, cap=None, *, scores=None, labels=None, ref_labels=None, margin=0.2,
                       directions="both", reduction="mean", impl="auto", similarity="cosine",
                       distributed=False) -> torch.Tensor:
    """Max of hinges, VSE++ (the paper's eq. 6): each term is max_n [α − s(a,p) + s_n]_+.
    """
    return _loss(Norm("max"), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity,
                 distributed)


def top_k_violation_loss(img=None, cap=None, *, k: int, scores=None, labels=None, ref_labels=None, margin=0.2,
                         directions="both", reduction="mean", impl="auto", similarity="cosine",
                         distributed=False) -> torch.Tensor:
    """Sum of the k largest hinges (Ky Fan k-norm): k=1 is MH, k ≥ #negatives is SH.
    """
    return _loss(Norm("topk", k=k), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity,
                 distributed)


def lp_violation_loss(img=None, cap=None, *, p: float, scores=None, labels=None, ref_labels=None, margin=0.2,
                      directions="both", reduction="mean", impl="auto", similarity="cosine",
                      distributed=False) -> torch.Tensor:
    """ℓp norm of the hinges, (Σ_n h_n^p)^{1/p}: p=1 is SH, p=∞ is MH.
    """
    return _loss(Norm("lp", p=p), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity,
                 distributed)


def mixed_violation_loss(img=None, cap=None, *, mix: float, scores=None, labels=None, ref_labels=None, margin=0.2,
                         directions="both", reduction="mean", impl="auto", similarity="cosine",
                         distributed=False) -> torch.Tensor:
    """(1−λ)·SH + λ·MH per term, λ = ``mix`` in [0, 1]: the SH→MH warm-up of VSE∞/ADAPT.
    """
    return _loss(Norm("mix", mix=mix), img, cap, scores, labels, ref_labels, margin, directions, reduction, impl, similarity,
                 distributed)


for _f in (sum_hinge_loss, max_violation_loss, top_k_violation_loss, lp_violation_loss, mixed_violation_loss):
    _f.__doc__ = (_f.__doc__ or "") + "\nArgs:" + _DOC_ARGS
