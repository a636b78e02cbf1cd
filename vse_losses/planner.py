"""The planner: from embeddings (or scores) and labels to the loss terms, one backend per call.

Every loss, function and miner reaches the mathematics through here. :func:`violation_terms`
resolves ``impl`` once into a :class:`~vse_losses.ops.Backend` and decides which operations
compute the terms:

- ``dense``: the formula with its backward written out — the paired call (labels absent):
  :func:`~vse_losses.ops.dense_paired.dense_paired_terms`; with labels (or one modality):
  :func:`~vse_losses.ops.dense_labelled.dense_labelled_terms`; the query blocks of a distributed
  call: their blocks of S through autograd (:func:`query_violation_terms`); precomputed scores
  and other PML distances: :func:`violation_terms_from_scores`;
- the paired max violation (labels absent, MH): :meth:`Backend.max_violation_paired`, O(B)
  memory, the cosine folded into the kernels; a small batch on Triton: one launch;
- the temperature losses (LSE, InfoNCE; any labels): ``lse_pairs``, both directions'
  log-sum-exps and the positive scores in one autograd Function, the cosine folded in;
- otherwise the hardest negatives by ``negative_topk`` (MH, top-k and the max part of a mix;
  the cosine as its scales), their scores and the positive scores recomputed by ``row_dots``
  times the rows' scales (:func:`selected_hinge_sum`), and the ℓp part by ``hinge_norm_pairs``
  (SH, ℓp and the sum part of a mix; the positive scores and the cosine folded in, as
  ``lse_pairs``), added per term.

With the cosine, no path of a local call on ``chunked``/``triton`` makes normalised copies of x
and y; ``dense`` normalises them (it builds S anyway), and so do the query blocks of
:func:`query_violation_terms` (the distributed path hands it normalised inputs).

With ``distributed=True`` a rank computes the terms of its own queries against every rank's
batch (:func:`distributed_terms`). Notation: ``x`` (B, D) are the queries of the image→caption
direction, ``y`` (M, D) the captions, ``S = x yᵀ``; a term per positive pair and direction,
i2t terms first (``docs/design.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import distributed as _dist
from .norms import Norm, smooth_max, violation_norm
from .ops import Backend, checked_backend, kernel_backend, kernel_config, resolve_backend
from .ops.dense_labelled import dense_labelled_terms
from .ops.dense_paired import dense_paired_terms
from .ops.tiling import cosine_scale_pair
from .pairs import check_paired, positive_pairs, resolve_labels

MH = Norm("max")  # the default norm of violation_terms

__all__ = [
    "violation_terms",
    "violation_terms_from_scores",
    "query_violation_terms",
    "selected_hinge_sum",
    "distributed_terms",
    "nan_guard",
]


def nan_guard(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """0·Σx (+ 0·Σy): a zero that is NaN when an input holds NaN/Inf, and ties both inputs to the
    graph so that their gradients are zero tensors rather than None when no term depends on them."""
    g = x.sum(dtype=torch.float32) * 0
    return g if y is None else g + y.sum(dtype=torch.float32) * 0


def violation_terms_from_scores(
    scores: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_mask: torch.Tensor,
    *,
    margin: float,
    norm: Norm,
    directions: str = "both",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense loss terms from a score matrix and boolean pair masks.

    scores: (B, M) similarities (larger = closer); pos_mask, neg_mask: (B, M) bool.
    Returns ``(terms, anchors)``: one term per positive pair and direction (i2t terms first),
    and for each the row index ``a`` of its pair.
    """
    S = scores.to(torch.promote_types(scores.dtype, torch.float32))
    a, p = pos_mask.nonzero(as_tuple=True)
    s_ap = S[a, p][:, None]
    if norm.smooth:  # raw violations, −∞ where not a negative
        inf = torch.full((), float("-inf"), dtype=S.dtype, device=S.device)
        terms, anchors = [], []
        if directions in ("both", "i2t"):
            terms.append(smooth_max(torch.where(neg_mask[a], margin - s_ap + S[a], inf), norm))
            anchors.append(a)
        if directions in ("both", "t2i"):
            terms.append(smooth_max(torch.where(neg_mask[:, p].t(), margin - s_ap + S[:, p].t(), inf), norm))
            anchors.append(a)
        return torch.cat(terms), torch.cat(anchors)
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
    y: torch.Tensor | None = None,
    *,
    labels: torch.Tensor | None = None,
    ref_labels: torch.Tensor | None = None,
    margin: float = 0.2,
    norm: Norm = MH,
    directions: str = "both",
    impl: str = "auto",
    query_rows: tuple[int, int] | None = None,
    query_cols: tuple[int, int] | None = None,
    cosine: bool = False,
    guard: bool | str = False,
    anchors: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss terms of embeddings whose similarity is the dot product ``x yᵀ`` (with ``cosine``,
    of the l2-normalised rows: off ``dense`` the operations then fold the norms into their kernels
    instead of normalising copies of x and y; ``dense`` and the query blocks normalise first).

    x: (B, D); y: (M, D) or None (one modality: ``y = x``, labels required).
    labels: (B,) or None (paired: row a with column a); ref_labels: (M,) or None (= labels).
    Returns ``(terms, anchors)`` as :func:`violation_terms_from_scores`, computed by ``impl``;
    terms are float32 (float64 for float64 inputs).

    query_rows, query_cols: ``(start, stop)`` to compute only the i2t terms of the pairs whose
    row ``a`` is in ``[start, stop)`` and the t2i terms of those whose column ``p`` is in the
    column range, each still against every negative (the terms of one rank with
    ``distributed=True``; cost O((rows + cols)·(B + M)·D)). Then the anchors are the terms'
    query indices within their range: ``a − start`` for i2t terms, ``p − start`` for t2i terms.

    guard: ``True``: a NaN/Inf in x or y makes every term NaN (:func:`nan_guard` added where the
    operations do not already carry it); ``"sum"``: it makes the terms' sum (and mean) NaN, at
    least one term NaN, which is all a caller that reduces them by a sum or mean needs (the dense
    Functions then add nothing: NaN reaches some term through S); ``False``: no guard.
    anchors: False for callers that discard them: ``(terms, None)`` (a paired call then builds no
    index tensor; at small batches every operation counts).
    """
    backend = resolve_backend(impl, x, x.shape[0] * (x if y is None else y).shape[0], norm.kind, y)
    args = (x, y, labels, ref_labels, margin, norm, directions, query_rows, query_cols, cosine, guard)
    if backend.name == "triton":  # the configuration's key costs a few µs: only where it is used
        config = kernel_config("violation_terms", *args)
        backend = checked_backend(impl, backend, config, lambda b: _probe(_violation_terms_on, b, *args), x.device)
    terms, idx = _violation_terms_on(backend, *args)
    if not anchors:
        return terms, None
    if idx is None:  # the paired dense call: pair j is the anchor j of a term in each direction
        a = torch.arange(x.shape[0], device=x.device)
        idx = torch.cat((a, a)) if directions == "both" else a
    return terms, idx


def _probe(fn, backend, x, y, *rest):
    """``fn`` forward and backward on x and y detached from the caller's graph (the same memory, no
    copy: the kernels only read it): every kernel of the call compiles and runs once (whatever the
    caller's grad mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        xs = x.detach().requires_grad_()
        ys = None if y is None else y.detach().requires_grad_()
        terms, _ = fn(backend, xs, ys, *rest)
        if terms.requires_grad:
            terms.sum().backward()


def _violation_terms_on(
    backend, x, y, labels, ref_labels, margin, norm, directions, query_rows, query_cols, cosine, guard
):
    """:func:`violation_terms` on a resolved backend; the anchors None for the paired dense call."""
    local = query_rows is None and query_cols is None
    paired = labels is None and ref_labels is None and y is not None  # pair j is (j, j)
    if (
        backend.max_violation_small is not None
        and paired
        and local
        and directions == "both"
        and norm.kind == "max"
        and x.shape[0] == y.shape[0] <= backend.max_violation_small_batch(x.device)
        and x.dtype == y.dtype
        and x.shape[1] > 0
    ):
        # the paired MH of a small batch, bound by launches rather than arithmetic: one kernel
        # forward (terms, anchors and the guard), one backward, nothing else
        return backend.max_violation_small(x, y, margin, cosine, guard=bool(guard))
    if backend.dense and paired and local:
        return _paired_dense_terms(x, y, margin, norm, directions, cosine, guard)
    terms, anchors = _terms(x, y, labels, ref_labels, margin, norm, directions, backend, query_rows, query_cols, cosine)
    # a sum of the labelled dense Function's terms, both directions, with the cosine, needs no guard:
    # a NaN/Inf in a row makes its whole row (or column) of S NaN, and every row is the own entry or
    # a negative of some term of one direction, whose masking keeps it or multiplies it by 0 (tested;
    # no term at all: the callers' zero is guarded). Each term is NaN only with the guard.
    sum_carries_nan = backend.dense and local and cosine and directions == "both"
    return _guarded(terms, x, y, guard, sum_carries_nan), anchors


def _guarded(terms, x, y, guard, sum_carries_nan: bool) -> torch.Tensor:
    """``terms`` with :func:`nan_guard` added where ``guard`` asks for it: ``True`` always,
    ``"sum"`` unless their sum already carries a NaN/Inf of the inputs (``sum_carries_nan``)."""
    if guard is True or (guard and not sum_carries_nan):
        return terms + nan_guard(x, y)
    return terms


def _paired_dense_terms(x, y, margin, norm, directions, cosine, guard):
    """The dense terms of a paired batch (pair j is row j with column j): the formula users write,
    both directions at once, its backward written out (:mod:`~vse_losses.ops.dense_paired`). No
    pair enumeration, no gathered copies of S: at the batch sizes most people train with, a call
    costs what the formula costs, or less. Returns ``(terms, None)``: the anchors are built by
    :func:`violation_terms` where a caller needs them."""
    B = x.shape[0]
    check_paired(B, y.shape[0])
    terms = dense_paired_terms(x, y, margin, norm, directions, cosine)
    # NaN/Inf in a row of an input makes its row or column of S NaN: the terms of the other
    # direction and its own term carry it, so their sum is NaN, except in a batch of one pair (no
    # negative) or through an unnormalised dot product (inf − inf is not always NaN). Each term
    # is NaN only with the guard.
    return _guarded(terms, x, y, guard, sum_carries_nan=B >= 2 and cosine), None


def _terms(x, y, labels, ref_labels, margin, norm, directions, backend: Backend, query_rows, query_cols, cosine):
    """:func:`violation_terms` without the guard or the small-batch kernel."""
    self_ref = y is None
    B, M = x.shape[0], (x if y is None else y).shape[0]
    # paired form without labels: pair j is (j, j), known without enumerating it (no sort, no
    # search, nothing of data-dependent size, so no device synchronisation)
    paired = labels is None and not self_ref
    local = query_rows is None and query_cols is None
    # the paired max violation has its own O(B)-memory autograd Function (ops/max_violation_paired.py)
    fused_max = paired and local and not backend.dense and norm.selection_k == 1
    fused_mh = fused_max and norm.kind == "max"  # MH itself, not the max part of a mix
    # the kernels take the cosine as scales of their score tiles: the normalised copies of x and y
    # (and their gradients) would be the largest buffers of these losses, and in 16-bit inputs
    # the rounding of those copies would be the largest error of the scores
    folded = local and not backend.dense
    if backend.dense and local:  # labelled or one modality (the paired call has its own Function)
        labels, ref_labels = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
        return dense_labelled_terms(x, y, labels, ref_labels, margin, norm, directions, cosine)
    if cosine and not folded:
        x = F.normalize(x, dim=1)
        y = None if self_ref else F.normalize(y, dim=1)
        cosine = False
    y = x if y is None else y
    labels, ref_labels = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    a, p = (labels, ref_labels) if paired else positive_pairs(labels, ref_labels, self_ref)
    if fused_mh:
        i2t, t2i = backend.max_violation_paired(x, y, margin, cosine)
        kept = [t for t, d in ((i2t, "i2t"), (t2i, "t2i")) if directions in ("both", d)]
        return torch.cat(kept), torch.cat([a] * len(kept))
    if not local:
        return query_violation_terms(
            x,
            y,
            labels,
            ref_labels,
            self_ref,
            (a, p),
            query_rows or (0, B),
            query_cols or (0, M),
            margin=margin,
            norm=norm,
            directions=directions,
            backend=backend,
        )
    if norm.smooth:  # one online log-sum-exp over the score tiles gives both directions
        # the op computes the pairs' scores (thresholds s_ap − α) and passes their gradient into
        # its own backward: no gradient-sized buffer for the thresholds' path
        L1, L2 = backend.lse_pairs(
            x,
            y,
            margin,
            norm.temperature,
            a,
            p,
            labels,
            ref_labels,
            self_ref,
            directions != "t2i",
            directions != "i2t",
            paired,
            cosine,
        )
        kept = [_smooth_term(L, norm) for L, d in ((L1, "i2t"), (L2, "t2i")) if directions in ("both", d)]
        return torch.cat(kept), torch.cat([a] * len(kept))
    selection = s_ap = scales = None
    if fused_max:  # the mix: its max-violation part
        i2t, t2i = backend.max_violation_paired(x, y, margin, cosine)
        selection = {"i2t": i2t, "t2i": t2i}
    elif norm.selection_k:
        # c = 1/max(‖row‖, ε) with gradient: the selected scores are cosines, exactly
        scales = cosine_scale_pair(x, y, cosine, same=self_ref)
        # the hardest negatives of a row do not depend on which positive of the row is the pair
        with torch.no_grad():
            row_val, row_idx, col_val, col_idx = backend.negative_topk(
                x,
                y,
                labels,
                ref_labels,
                self_ref,
                norm.selection_k,
                paired=paired,
                scales=None if scales is None else tuple(c.detach() for c in scales),
            )
        selection = {"i2t": (row_val, row_idx), "t2i": (col_val, col_idx)}
        s_ap = backend.row_dots(x, y) if paired else backend.row_dots(x, y, a, p)
        if scales is not None:
            s_ap = s_ap * scales[0][a] * scales[1][p]
    hinge = None
    if norm.hinge_p:
        # one pass over the score tiles gives both directions' ℓp norms; the op computes the pairs'
        # scores (thresholds s_ap − α) and passes their gradient in its own backward
        T1, T2 = backend.hinge_norm_pairs(
            x,
            y,
            margin,
            a,
            p,
            labels,
            ref_labels,
            self_ref,
            norm.hinge_p,
            directions != "t2i",
            directions != "i2t",
            paired,
            cosine,
        )
        hinge = {"i2t": T1, "t2i": T2}
    terms, anchors = [], []
    for direction in ("i2t", "t2i"):
        if directions not in ("both", direction):
            continue
        # i2t: the queries are the rows x[a] against the keys y; t2i: the columns y[p] against x
        q_side, k_side = (x, y) if direction == "i2t" else (y, x)
        q_idx = a if direction == "i2t" else p
        qk_scales = None if scales is None else (scales if direction == "i2t" else scales[::-1])
        parts = []
        if fused_max:
            parts.append(selection[direction] * norm.selection_weight)
        elif selection is not None:
            vals, idx = selection[direction]
            if not paired:  # the pairs' rows (paired: pair n is row n)
                vals, idx = vals[q_idx], idx[q_idx]
            # paired: every other column of a row (row of a column) is a negative
            complete = paired and norm.selection_k <= k_side.shape[0] - 1
            selected = selected_hinge_sum(
                q_side,
                k_side,
                vals,
                idx,
                s_ap,
                margin,
                complete,
                q_rows=None if paired else q_idx,
                backend=backend,
                scales=qk_scales,
            )
            parts.append(selected if norm.selection_weight == 1 else selected * norm.selection_weight)
        if hinge is not None:
            parts.append(hinge[direction] if norm.hinge_weight == 1 else hinge[direction] * norm.hinge_weight)
        terms.append(sum(parts[1:], parts[0]))  # every hinge norm has a selection or an ℓp part
        anchors.append(a)
    return torch.cat(terms), torch.cat(anchors)


def query_violation_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor,
    ref_labels: torch.Tensor,
    self_ref: bool,
    pairs: tuple[torch.Tensor, torch.Tensor],
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    margin: float,
    norm: Norm,
    directions: str,
    backend: Backend | None = None,
    scores: Callable | None = None,
    impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms of the queries in ``rows`` (i2t) and ``cols`` (t2i) against every key.

    Each direction works on its block of queries only: i2t on ``x[rows]`` against ``y``, t2i
    on ``y[cols]`` against ``x`` (the transposed problem), so nothing outside the two blocks of
    ``S`` is computed. ``pairs`` are all positive pairs ``(a, p)``; ``scores(u, v)`` (dense
    only, default ``u vᵀ``) gives the similarities of rows of x to rows of y. ``backend`` (or
    ``impl``, resolved here) computes them. Returns the terms and each term's query index within
    its range. A sample's pair with itself (one modality) has equal labels, so the label test
    alone excludes it from the negatives.
    """
    if backend is None:
        backend = resolve_backend(impl or "auto", x, x.shape[0] * y.shape[0], norm.kind, y)
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
        if backend.dense:
            score = scores or (lambda u, v: u.to(wide) @ v.to(wide).t())
            S = score(x[lo:hi], y) if direction == "i2t" else score(x, y[lo:hi]).t()
            neg = (q_lab[lo:hi, None] != k_lab[None, :]).to(S.dtype)
            qi = q_idx - lo
            if norm.smooth:
                v = torch.where(neg[qi] > 0, margin - S[qi, k_idx][:, None] + S[qi], float("-inf"))
                term = smooth_max(v, norm)
            else:
                term = violation_norm(F.relu(margin - S[qi, k_idx][:, None] + S[qi]) * neg[qi], norm)
        elif norm.smooth:
            # the query block as the rows of its own problem, its pairs sorted by query (t2i: by column)
            order = torch.argsort(q_idx, stable=True)
            qo, ko = q_idx[order], k_idx[order]
            L, _ = backend.lse_pairs(
                q_side[lo:hi],
                k_side,
                margin,
                norm.temperature,
                qo - lo,
                ko,
                q_lab[lo:hi],
                k_lab,
                False,
                True,
                False,
                False,
            )
            term = torch.empty_like(L).index_copy_(0, order, _smooth_term(L, norm))
        else:
            s_ap = backend.row_dots(q_side, k_side, q_idx, k_idx)
            term = torch.zeros_like(s_ap)
            if norm.selection_k:
                with torch.no_grad():
                    vals, idx, _, _ = backend.negative_topk(
                        q_side[lo:hi], k_side, q_lab[lo:hi], k_lab, False, norm.selection_k
                    )
                selected = selected_hinge_sum(
                    q_side, k_side, vals[q_idx - lo], idx[q_idx - lo], s_ap, margin, q_rows=q_idx, backend=backend
                )
                term = term + selected * norm.selection_weight
            if norm.hinge_p:
                hn = backend.hinge_norm_rows(
                    q_side[q_idx],
                    k_side,
                    s_ap - margin,
                    q_lab[q_idx],
                    k_lab,
                    torch.full_like(q_idx, -1),
                    norm.hinge_p,
                )
                term = term + hn * norm.hinge_weight
        terms.append(term)
        anchors.append(q_idx - lo)
    return torch.cat(terms), torch.cat(anchors)


def _smooth_term(L: torch.Tensor, norm: Norm) -> torch.Tensor:
    """τ·L for ``lse``, L itself for ``infonce`` (L = log(1 + Σ exp(v/τ)))."""
    return L * norm.temperature if norm.kind == "lse" else L


def selected_hinge_sum(
    q: torch.Tensor,
    keys: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    s_ap: torch.Tensor,
    margin: float,
    complete: bool = False,
    q_rows: torch.Tensor | None = None,
    impl: str = "chunked",
    backend: Backend | None = None,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Σ_j [α − s_ap + s(q_n, keys[idx_nj])]_+ over the selected hardest negatives of each pair n.

    q: queries, row ``q_rows[n]`` for pair n (q_rows None: row n); idx, vals: (P, k) the pair's
    hardest negatives (found without gradient; vals = −inf where there are fewer than k);
    s_ap: (P,). The hinge is monotone, so the k largest hinges are the hinges of the k largest
    scores. The selected scores are recomputed by the backend's ``row_dots``, so the backward is
    a scatter over the saved indices, O(P·k·D), with no copy of the rows kept. ``complete``:
    every pair is known to have k negatives (no −inf in vals). ``backend``, or ``impl`` resolved
    here: what computes the dots. ``scales``: ``(c_q, c_keys)`` (the rows' 1/max(‖·‖, ε), with
    their gradient), the scores then the cosines ``row_dots · c_q[q_n] · c_keys[idx_nj]`` (s_ap
    the pairs' cosines too); None: the dot products ``s(q, k) = q·k``.
    """
    if backend is None:
        backend = kernel_backend(impl, q)
    P, k = idx.shape
    qi = q_rows
    if k > 1:
        qi = (torch.arange(P, device=idx.device) if q_rows is None else q_rows)[:, None].expand(P, k).reshape(-1)
    sel = backend.row_dots(q, keys, qi, idx.reshape(-1))  # q_n · keys[idx_nj]
    if scales is not None:  # the cosines, their scales' gradient by autograd
        c_q, c_k = scales
        sel = sel * (c_q[:P] if qi is None else c_q[qi]) * c_k[idx.reshape(-1)]
    sel = sel.view(P, k)  # (P, k)
    if not complete:
        sel = torch.where(vals == float("-inf"), torch.full_like(sel, float("-inf")), sel)
    h = F.relu(margin - s_ap[:, None] + sel)
    return h.squeeze(-1) if h.shape[-1] == 1 else h.sum(-1)


def distributed_terms(
    x: torch.Tensor,
    y: torch.Tensor | None,
    labels: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    *,
    margin: float,
    norm: Norm,
    directions: str,
    impl: str,
    scores: Callable | None = None,
):
    """This rank's terms against every rank's batch: ``(terms, anchors, batch)``.

    x, y: this rank's embeddings (y None: one modality), already normalised where the similarity
    needs it; they are gathered with gradient (:func:`vse_losses.distributed.gather_batch`).
    ``scores(u, v)``: a similarity other than the dot product (then dense). The anchors are the
    local query indices (the x row for i2t terms, the y row for t2i terms); ``batch`` is the
    gathered :class:`~vse_losses.distributed.GlobalBatch` (its ``guard()`` ties every rank's
    loss to the gather).
    """
    g = _dist.gather_batch(x, y, labels, ref_labels)
    if scores is None:
        terms, anchors = violation_terms(
            g.x,
            g.y,
            labels=g.labels,
            ref_labels=g.ref_labels,
            margin=margin,
            norm=norm,
            directions=directions,
            impl=impl,
            query_rows=g.rows,
            query_cols=g.cols,
        )
    else:
        self_ref = g.y is None
        terms, anchors = query_violation_terms(
            g.x,
            g.x if self_ref else g.y,
            g.labels,
            g.ref_labels,
            self_ref,
            positive_pairs(g.labels, g.ref_labels, self_ref),
            g.rows,
            g.cols,
            margin=margin,
            norm=norm,
            directions=directions,
            impl="dense",
            scores=scores,
        )
    return terms, anchors, g
