"""The order-embedding score matrix, ``S[i, j] = −‖max(0, y_j − x_i)‖₂`` (x: images, y: captions).

The VSE++ code's ``--measure order``: 0 when the caption lies below the image in every dimension
(the image entails it), more negative the further it sticks out. The dense formula broadcasts a
(B, M, D) tensor; the chunked one takes the rows of x a chunk at a time and its backward recomputes
each chunk, so that forward and backward hold O(chunk·M·D) besides S.

The gradient: ∂S_ij/∂y_j = −r/‖r‖ and ∂S_ij/∂x_i = r/‖r‖, r = max(0, y_j − x_i), taken as 0 where
‖r‖ = 0 (the maximum score, which the square root of the original formula turns into NaN).
"""

from __future__ import annotations

import torch

# The largest (chunk, M, D) block the chunked formula holds at once, in elements (16 MB of fp32).
CHUNK_ELEMENTS = 1 << 22


def order_scores_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """S (B, M) from x (B, D), y (M, D) through the (B, M, D) broadcast; differentiable."""
    return -torch.linalg.vector_norm((y[None, :, :] - x[:, None, :]).clamp_min(0), dim=-1)


def chunk_rows_for(M: int, D: int) -> int:
    """Rows per chunk: the most whose (rows, M, D) block fits in :data:`CHUNK_ELEMENTS`, at least 1."""
    return max(1, CHUNK_ELEMENTS // max(M * D, 1))


class OrderScoresChunked(torch.autograd.Function):
    """S = order_scores_dense(x, y), computed ``chunk`` rows of x at a time; the backward recomputes
    each chunk's (chunk, M, D) block of r = max(0, y − x) instead of saving it."""

    @staticmethod
    def forward(ctx, x, y, chunk: int):
        ctx.save_for_backward(x, y)
        ctx.chunk = chunk
        S = x.new_empty(x.shape[0], y.shape[0])
        for start in range(0, x.shape[0], chunk):
            S[start : start + chunk] = order_scores_dense(x[start : start + chunk], y)
        return S

    @staticmethod
    def backward(ctx, grad_S):
        x, y = ctx.saved_tensors
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        gy = torch.zeros_like(y) if ctx.needs_input_grad[1] else None
        for start in range(0, x.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            r = (y[None, :, :] - x[rows, None, :]).clamp_min(0)  # (chunk, M, D)
            n = torch.linalg.vector_norm(r, dim=-1)
            # ∂L/∂r = −G·r/‖r‖ (0 where ‖r‖ = 0); r is 0 wherever y − x ≤ 0, which masks the clamp
            w = torch.where(n > 0, grad_S[rows] / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n))
            if gx is not None:
                gx[rows] = torch.einsum("cm,cmd->cd", w, r)
            if gy is not None:
                gy -= torch.einsum("cm,cmd->md", w, r)
        return gx, gy, None


def order_scores_chunked(x: torch.Tensor, y: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """S (B, M) of x (B, D), y (M, D), ``chunk_rows`` rows of x at a time (None: as many as fit in
    :data:`CHUNK_ELEMENTS`); differentiable, O(chunk_rows·M·D) memory besides S."""
    chunk = chunk_rows or chunk_rows_for(y.shape[0], y.shape[1])
    return OrderScoresChunked.apply(x, y, chunk)
