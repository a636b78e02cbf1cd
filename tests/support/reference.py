"""Independent references for the tests: explicit loops of the paper's equations (eq. 5 and 6 and
their continuum), written element by element, and the original VSE++ criterion's dense formula."""

from __future__ import annotations

import math

import torch


def norm_of(h: list, kind: str, k: int = 1, p: float = 1.0, mix: float = 0.0, temperature=1.0) -> torch.Tensor:
    """The term of one violation vector given as a list of 0-d float64 tensors: the raw violations
    α − s(a,p) + s_n (hinged here for the hinge norms; hinged input is left as it is)."""
    if not h:
        return torch.zeros((), dtype=torch.float64)
    if kind in ("lse", "infonce"):  # log(1 + Σ exp(v/τ)), the 1 being the positive
        lse = torch.log(1 + sum(torch.exp(v / temperature) for v in h))
        return lse * temperature if kind == "lse" else lse
    v = torch.clamp(torch.stack(h), min=0)
    if kind == "sum":
        return v.sum()
    if kind == "max":
        return v.max()
    if kind == "topk":
        return torch.sort(v, descending=True).values[:k].sum()
    if kind == "lp":
        if math.isinf(p):
            return v.max()
        return v.pow(p).sum().pow(1.0 / p)
    if kind == "mix":
        return (1 - mix) * v.sum() + mix * v.max()
    raise ValueError(kind)


def loop_terms(S, labels=None, ref_labels=None, self_ref=False, margin=0.2, directions="both", **norm):
    """One term per positive pair and direction, by explicit loops over the score matrix S (B, M).

    i2t term of (a, p): norm over n of [margin − S[a,p] + S[a,n]]_+, n a negative of row a;
    t2i term of (a, p): norm over n of [margin − S[a,p] + S[n,p]]_+, n a negative of column p.
    """
    B, M = S.shape
    if labels is None:
        labels = list(range(B))
        ref_labels = list(range(M))
    labels = [int(v) for v in labels]
    ref_labels = labels if ref_labels is None else [int(v) for v in ref_labels]
    pairs = [(a, p) for a in range(B) for p in range(M) if labels[a] == ref_labels[p] and not (self_ref and a == p)]
    terms = []
    if directions in ("both", "i2t"):
        for a, p in pairs:
            h = [
                margin - S[a, p] + S[a, n] for n in range(M) if labels[a] != ref_labels[n] and not (self_ref and n == a)
            ]
            terms.append(norm_of(h, **norm))
    if directions in ("both", "t2i"):
        for a, p in pairs:
            h = [
                margin - S[a, p] + S[n, p] for n in range(B) if labels[n] != ref_labels[p] and not (self_ref and n == p)
            ]
            terms.append(norm_of(h, **norm))
    return torch.stack(terms) if terms else torch.zeros(0, dtype=torch.float64)


def original_vsepp_loss(im, s, margin=0.2, max_violation=False):
    """The original VSE++ ContrastiveLoss (summed over the batch; rows of im and s are pairs)."""
    scores = im @ s.t()
    diagonal = scores.diag().view(im.size(0), 1)
    d1 = diagonal.expand_as(scores)
    d2 = diagonal.t().expand_as(scores)
    cost_s = (margin + scores - d1).clamp(min=0)
    cost_im = (margin + scores - d2).clamp(min=0)
    mask = torch.eye(scores.size(0), dtype=torch.bool)
    cost_s = cost_s.masked_fill(mask, 0)
    cost_im = cost_im.masked_fill(mask, 0)
    if max_violation:
        cost_s = cost_s.max(1)[0]
        cost_im = cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


def cosine(x, y):
    x = torch.nn.functional.normalize(x, dim=1)
    y = torch.nn.functional.normalize(y, dim=1)
    return x @ y.t()


def paired_max_violation(x, y, margin, use_cosine):
    """Eq. 6 of the paired batch (pair j is (x_j, y_j)): the (i2t, t2i) terms, each (B,), from the
    score matrix with its diagonal masked (``max`` picks the lowest index on ties)."""
    S = cosine(x, y) if use_cosine else x @ y.t()
    d = S.diagonal()
    neg = S.masked_fill(torch.eye(len(x), dtype=torch.bool, device=S.device), float("-inf"))
    return torch.relu(margin - d + neg.max(1).values), torch.relu(margin - d + neg.max(0).values)


def lse_pairs_loop(x, y, margin, tau, a, p_idx, labels, ref_labels, self_ref, do_i2t=True, do_t2i=True, cosine=False):
    """``lse_pairs``' formula, one pair at a time, its negatives listed one by one (differentiable, in
    x's dtype): with the threshold t_j = x_a·y_p − margin_j, L¹_j = log(1 + Σ_n exp((x_a·y_n −
    t_j)/τ)) over the n with ref_labels[n] ≠ labels[a] (and n ≠ a with self_ref), L²_j = log(1 +
    Σ_n exp((x_n·y_p − t_j)/τ)) over the n with labels[n] ≠ ref_labels[p] (and n ≠ p). ``cosine``:
    of the rows F.normalize'd first (y is x: once)."""
    if cosine:
        xn = torch.nn.functional.normalize(x, dim=1)
        x, y = xn, (xn if y is x else torch.nn.functional.normalize(y, dim=1))
    margin = torch.as_tensor(margin, dtype=x.dtype).expand(a.shape[0])
    L1, L2 = [], []
    for j, (i, k) in enumerate(zip(a.tolist(), p_idx.tolist())):
        row = [n for n in range(len(y)) if ref_labels[n] != labels[i] and not (self_ref and n == i)]
        col = [n for n in range(len(x)) if labels[n] != ref_labels[k] and not (self_ref and n == k)]
        t = x[i] @ y[k] - margin[j]
        L1.append(torch.log(1 + torch.exp((y[row] @ x[i] - t) / tau).sum()) if do_i2t else 0 * t)
        L2.append(torch.log(1 + torch.exp((x[col] @ y[k] - t) / tau).sum()) if do_t2i else 0 * t)
    return torch.stack(L1), torch.stack(L2)


def _hinge_lp(v, p):
    """(Σ [v]_+^p)^{1/p} of a 1-d tensor of raw violations; 0 (gradient 0) where none is active."""
    total = torch.clamp(v, min=0).pow(p).sum()
    return total.pow(1.0 / p) if float(total.detach()) > 0 else total * 0


def hinge_pairs_loop(x, y, margin, a, p_idx, labels, ref_labels, self_ref, p, do_i2t=True, do_t2i=True, cosine=False):
    """``hinge_norm_pairs``' formula, one pair at a time, its negatives listed one by one
    (differentiable, in x's dtype): with the threshold t_j = s(a_j, p_j) − margin_j,
    T¹_j = (Σ_n [s(a_j, n) − t_j]_+^p)^{1/p} over the n with ref_labels[n] ≠ labels[a_j] (and
    n ≠ a_j with self_ref), T²_j = (Σ_n [s(n, p_j) − t_j]_+^p)^{1/p} over the n with
    labels[n] ≠ ref_labels[p_j] (and n ≠ p_j); s the dot product of the rows or, with ``cosine``,
    of the rows F.normalize'd first (y is x: once)."""
    if cosine:
        xn = torch.nn.functional.normalize(x, dim=1)
        x, y = xn, (xn if y is x else torch.nn.functional.normalize(y, dim=1))
    margin = torch.as_tensor(margin, dtype=x.dtype).expand(a.shape[0])
    T1, T2 = [], []
    for j, (i, k) in enumerate(zip(a.tolist(), p_idx.tolist())):
        row = [n for n in range(len(y)) if ref_labels[n] != labels[i] and not (self_ref and n == i)]
        col = [n for n in range(len(x)) if labels[n] != ref_labels[k] and not (self_ref and n == k)]
        t = x[i] @ y[k] - margin[j]
        T1.append(_hinge_lp(y[row] @ x[i] - t, p) if do_i2t else 0 * t)
        T2.append(_hinge_lp(x[col] @ y[k] - t, p) if do_t2i else 0 * t)
    return torch.stack(T1), torch.stack(T2)


def lse_case(B, M, D, kind, seed=0, n_labels=5, spread=None):
    """Inputs of one call of a pair operation (``lse_pairs``, ``hinge_norm_pairs``): x, y, labels,
    ref_labels, the positive pairs (a, p_idx), a margin per pair, self_ref. kind: "paired",
    "self_ref" (y is x) or "labels" (duplicates on both sides). ``spread`` (e.g. 1e3): every row
    multiplied by a factor between 1/spread and spread (log-uniform), so that only the cosine is
    O(1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g) / D**0.5
    y = torch.randn(M, D, generator=g) / D**0.5
    if spread:
        log_s = math.log(spread)
        x = x * torch.exp((2 * torch.rand(B, 1, generator=g) - 1) * log_s)
        y = y * torch.exp((2 * torch.rand(M, 1, generator=g) - 1) * log_s)
    if kind == "paired":
        labels = ref_labels = torch.arange(B)
    elif kind == "self_ref":
        y = x
        labels = ref_labels = torch.randint(0, min(n_labels, max(2, B // 3)), (B,), generator=g)  # pairs i ≠ j
    else:  # labels with duplicates on both sides, B ≠ M
        labels = torch.randint(0, n_labels, (B,), generator=g)
        ref_labels = torch.randint(0, n_labels, (M,), generator=g)
    same = labels[:, None] == ref_labels[None, :]
    if kind == "self_ref":
        same &= ~torch.eye(B, dtype=torch.bool)
    a, p_idx = same.nonzero(as_tuple=True)
    margin = 0.4 * torch.rand(a.shape[0], generator=g)  # a different margin per pair
    return dict(
        x=x, y=y, margin=margin, a=a, p_idx=p_idx, labels=labels, ref_labels=ref_labels, self_ref=kind == "self_ref"
    )
