"""The backward of one side of :class:`~vse_losses.ops.max_violation_paired.MaxViolationPaired`
in torch, chunk by chunk.

The gradients are written chunk by chunk in the inputs' dtype; the rows a row receives from (the
pairs whose hardest negative it is) are found by sorting the pairs by their hardest row, and
added with ``index_put_(accumulate=True)`` into a chunk-sized float32 buffer (deterministic).
Peak extra memory: a few chunks of ``TILE_ELEMENTS`` float32 values and O(B) vectors.
"""

from __future__ import annotations

import torch

from .tiling import EPS, TILE_ELEMENTS


def mh_side_chunked(own, other, c_own, c_other, d, s_ii, w_own, hard_own, val_own, w_in, hard_in, val_in, cosine):
    """The gradient of one side (x: own = x, the terms "own" are i2t, the received ones t2i).

    Row i: c_i (d_i ô_i + w_own_i ô_{hard_own_i} + Σ_{j: hard_in_j = i} w_in_j ô_j − A_i ŝ_i),
    with ô the other side scaled, ŝ this side scaled, A_i = d_i s_ii + w_own_i val_own_i +
    Σ_{j: hard_in_j = i} w_in_j val_in_j.
    """
    B, D = own.shape
    wide = d.dtype
    step = max(1, min(B, TILE_ELEMENTS // max(D, 1)))

    def o_hat(idx):  # rows of the other side, scaled, in the wide dtype
        rows = other[idx].to(wide)
        return rows * c_other[idx, None] if cosine else rows

    if cosine:
        A = d * s_ii + w_own * val_own.nan_to_num(neginf=0.0)
        A = A.index_put((hard_in,), w_in * val_in.nan_to_num(neginf=0.0), accumulate=True)
        # ‖row‖ ≤ ε: normalisation divides by the constant ε, which has no projection term
        A = torch.where(c_own * EPS < 1.0, A, torch.zeros((), dtype=wide, device=A.device))
    if step >= B:  # one chunk: the scaled other side once, every index as it is
        oh = o_hat(slice(None))
        acc = d[:, None] * oh + w_own[:, None] * oh[hard_own]
        acc.index_put_((hard_in,), w_in[:, None] * oh, accumulate=True)
        if cosine:
            acc -= (A * c_own)[:, None] * own.to(wide)
            acc *= c_own[:, None]
        return acc.to(own.dtype)
    # several chunks: the senders with a gradient, sorted by the row they send to
    out = torch.empty_like(own)
    order = torch.nonzero(w_in).squeeze(1)  # (one synchronisation)
    order = order[torch.argsort(hard_in[order], stable=True)]
    bounds = torch.searchsorted(
        hard_in[order], torch.arange(0, B + step, step, device=own.device).clamp_max(B)
    ).tolist()
    for c, r0 in enumerate(range(0, B, step)):
        r1 = min(B, r0 + step)
        acc = d[r0:r1, None] * o_hat(slice(r0, r1)) + w_own[r0:r1, None] * o_hat(hard_own[r0:r1])
        js = order[bounds[c] : bounds[c + 1]]
        for j0 in range(0, js.shape[0], step):  # a row can receive from every pair (a collapse)
            jj = js[j0 : j0 + step]
            acc.index_put_((hard_in[jj] - r0,), w_in[jj, None] * o_hat(jj), accumulate=True)
        if cosine:
            acc -= (A[r0:r1] * c_own[r0:r1])[:, None] * own[r0:r1].to(wide)
            acc *= c_own[r0:r1, None]
        out[r0:r1] = acc
    return out
