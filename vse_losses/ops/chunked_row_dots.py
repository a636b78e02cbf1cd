"""Dot products of selected row pairs, ``s_n = q[qi_n] · k[ki_n]``, without copies of the rows.

The positive scores ``s(a, p)`` and the scores of the hardest negatives are such dot products.
Through autograd (``(q[qi].float() * k[ki].float()).sum(-1)``) each one keeps two N×D copies,
widened to float32 for half inputs, alive until the backward: in bfloat16 at B = 65,536, D = 1,024
that is 512 MiB per product. Here the forward runs over chunks of pairs and saves only q, k and the
indices (the Triton backend's forward is one pass, :mod:`~vse_losses.ops.triton_row_dots`);
the backward recomputes the gathers chunk by chunk:

    ∂q[qi_n] += g_n k[ki_n],   ∂k[ki_n] += g_n q[qi_n].

A side whose index is None is aligned with the pairs (row n): its gradient is written once per
row, in place, in the input dtype. A gathered side accumulates in float32 (several pairs can
share a row) with ``index_put_(accumulate=True)``, deterministic on every device.
"""

from __future__ import annotations

import torch

from .tiling import TILE_ELEMENTS


def _chunk(n: int, d: int) -> int:
    return max(1, min(n, TILE_ELEMENTS // max(d, 1)))


def _rows(t: torch.Tensor, idx: torch.Tensor | None, n0: int, n1: int) -> torch.Tensor:
    return t[n0:n1] if idx is None else t[idx[n0:n1]]


def _put(grad: torch.Tensor, idx: torch.Tensor | None, n0: int, n1: int, part: torch.Tensor) -> None:
    """Pairs n0 … n1 − 1 give ``part`` to their rows of ``grad``: written (aligned) or added (gathered)."""
    if idx is None:
        grad[n0:n1] = part
    else:
        grad.index_put_((idx[n0:n1],), part, accumulate=True)


def row_dots_forward_chunked(q, k, qi, ki, n: int) -> torch.Tensor:
    """(n,) ``q[qi_n] · k[ki_n]`` in the wide dtype, over chunks of pairs (no autograd)."""
    wide = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.float32)
    step = _chunk(n, q.shape[1])
    parts = [
        (_rows(q, qi, n0, n0 + step).to(wide) * _rows(k, ki, n0, n0 + step).to(wide)).sum(-1)
        for n0 in range(0, max(n, 1), step)
    ]  # n = 0: one empty chunk
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class RowDots(torch.autograd.Function):
    """forward(q, k, qi, ki, forward) → (N,) dots; ``forward`` is the backend's forward pass
    (:func:`row_dots_forward_chunked` or the Triton one); the backward is this file's."""

    @staticmethod
    def forward(ctx, q, k, qi, ki, forward):
        n = (qi if qi is not None else ki if ki is not None else q).shape[0]
        ctx.save_for_backward(q, k, qi, ki)
        ctx.wide = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.float32)
        return forward(q, k, qi, ki, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        q, k, qi, ki = ctx.saved_tensors
        wide = ctx.wide
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = g.shape[0]
        step = _chunk(n, q.shape[1])
        g = g.to(wide)
        if step >= n and qi is None and ki is None and n == q.shape[0] == k.shape[0]:  # one chunk, aligned: no buffers
            gn = g[:, None]
            return (
                (gn * k.to(wide)).to(q.dtype) if need_q else None,
                (gn * q.to(wide)).to(k.dtype) if need_k else None,
                None,
                None,
                None,
            )
        # aligned side: one write per row, in its dtype; gathered side: a float32 accumulator
        gq = (
            None
            if not need_q
            else (torch.zeros_like(q) if qi is None else torch.zeros(q.shape, dtype=wide, device=q.device))
        )
        gk = (
            None
            if not need_k
            else (torch.zeros_like(k) if ki is None else torch.zeros(k.shape, dtype=wide, device=k.device))
        )
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            gn = g[n0:n1, None]
            if need_q:
                _put(gq, qi, n0, n1, gn * _rows(k, ki, n0, n1).to(wide))
            if need_k:
                _put(gk, ki, n0, n1, gn * _rows(q, qi, n0, n1).to(wide))
        return (None if gq is None else gq.to(q.dtype), None if gk is None else gk.to(k.dtype), None, None, None)


def row_dots_chunked(
    q: torch.Tensor, k: torch.Tensor, qi: torch.Tensor | None = None, ki: torch.Tensor | None = None
) -> torch.Tensor:
    """``s_n = q[qi_n] · k[ki_n]`` in float32 (float64 for float64 inputs), differentiable in q and k.

    q: (Bq, D), k: (Bk, D); qi, ki: (N,) int64 row indices, or None for rows 0 … N−1 (aligned).
    """
    return RowDots.apply(q, k, qi, ki, row_dots_forward_chunked)
