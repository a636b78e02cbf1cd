"""Row dot products ``s_n = q[qi_n] · k[ki_n]`` in one pass (Triton), float32 accumulation.

The torch forward of :class:`~vse_losses.ops.chunked_row_dots.RowDots` widens both rows to float32,
multiplies and sums, chunk by chunk: five passes over float32 chunks of the rows. This kernel
reads each row once in its own dtype (at B = 65,536, D = 1,024 bf16: 256 MiB instead of ~2 GB of
traffic). One program per block of pairs; an index vector of None means row n itself.
"""

from __future__ import annotations

import torch

from .chunked_row_dots import RowDots, row_dots_forward_chunked
from .triton_common import (  # triton, tl: None without triton
    is_interpreting,
    jitted,
    tl,
    triton,
)


def _row_dots_kernel(
    q_ptr,
    k_ptr,
    qi_ptr,
    ki_ptr,
    out_ptr,
    N,
    D,
    stride_q,
    stride_k,
    GATHER_Q: tl.constexpr,
    GATHER_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < N
    qr = rows.to(tl.int64)
    kr = rows.to(tl.int64)
    if GATHER_Q:
        qr = tl.load(qi_ptr + rows, mask=ok, other=0).to(tl.int64)
    if GATHER_K:
        kr = tl.load(ki_ptr + rows, mask=ok, other=0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        m = ok[:, None] & (dd[None, :] < D)
        a = tl.load(q_ptr + qr[:, None] * stride_q + dd[None, :], mask=m, other=0.0).to(tl.float32)
        b = tl.load(k_ptr + kr[:, None] * stride_k + dd[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    tl.store(out_ptr + rows, acc, mask=ok)


def row_dots_forward_triton(
    q: torch.Tensor, k: torch.Tensor, qi: torch.Tensor | None, ki: torch.Tensor | None, n: int
) -> torch.Tensor:
    """(n,) float32: ``q[qi_n] · k[ki_n]`` (row n where an index is None). Rows of two dtypes, or
    without features, take the torch forward (the kernel reads one dtype)."""
    if q.dtype != k.dtype or q.shape[1] == 0:
        return row_dots_forward_chunked(q, k, qi, ki, n)
    q, k = q.contiguous(), k.contiguous()
    out = torch.empty(n, device=q.device, dtype=torch.float32)
    if n == 0:
        return out
    cfg = _config(q.shape[1], is_interpreting())
    jitted(_row_dots_kernel)[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        q,
        k,
        out if qi is None else qi.contiguous(),
        out if ki is None else ki.contiguous(),
        out,
        n,
        q.shape[1],
        q.stride(0),
        k.stride(0),
        GATHER_Q=qi is not None,
        GATHER_K=ki is not None,
        BLOCK_N=cfg["BLOCK_N"],
        BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"],
    )
    return out


def row_dots_triton(
    q: torch.Tensor, k: torch.Tensor, qi: torch.Tensor | None = None, ki: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`~vse_losses.ops.chunked_row_dots.row_dots_chunked` with this file's forward pass."""
    return RowDots.apply(q, k, qi, ki, row_dots_forward_triton)


def _config(D: int, interpret: bool) -> dict:
    if interpret:
        return dict(BLOCK_N=4, BLOCK_D=16, num_warps=4)
    # 8 rows × up to 512 columns per step: 16-byte loads in bf16 with 4 warps
    return dict(BLOCK_N=8, BLOCK_D=min(512, max(16, triton.next_power_of_2(D))), num_warps=4)
