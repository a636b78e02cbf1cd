"""Backward of the paired max violation in one memory-bound pass per input (Triton).

With the notation of :mod:`vse_losses.ops.max_violation_paired` (x̂ = c x, ŷ = c y), row i of
the gradient of one side ("own", the other side "other") is

    c_i (d_i ô_i + w_i ô_{h_i} + Σ_{j: v_j = i} u_j ô_j − A_i ŝ_i),
    A_i = d_i s_ii + w_i m_i + Σ_{j: v_j = i} u_j n_j             (cosine; else A = 0)

where ô is the other side scaled, ŝ this side scaled, w / h / m the weights, hardest indices and
hardest scores of this side's own terms, u / v / n those of the other side's terms ("senders":
term j sends u_j ô_j to its hardest row v_j), and d = −(w¹ + w²).

The torch version (:func:`~vse_losses.ops.chunked_max_violation_backward.mh_side_chunked`) makes
about twenty passes over chunks of float32 rows; this kernel reads each input row a few times and
writes each gradient row once, in the inputs' dtype. The senders are sorted by the row they send
to (``order``, ``offsets``: CSR), so row i reads its own segment: no atomics, a fixed summation
order (deterministic). One program per row and block of columns; a row that receives from many
senders (a collapsed batch) loops over them in blocks.
"""

from __future__ import annotations

import torch

from .triton_common import (  # triton, tl: None without triton
    is_interpreting,
    jitted,
    tl,
    triton,
)


def _mh_side_kernel(
    own_ptr,
    other_ptr,
    grad_ptr,
    c_own_ptr,
    c_other_ptr,  # (B,) fp32 scales
    d_ptr,
    s_ptr,  # (B,) fp32: −(w¹ + w²), s_ii
    w_ptr,
    h_ptr,
    m_ptr,  # (B,) own terms: weights, hardest index, hardest score
    u_ptr,
    n_ptr,  # (B,) senders' weights and hardest scores
    order_ptr,
    offsets_ptr,  # senders sorted by destination; (B + 1,) segment starts
    D,
    stride_own,
    stride_other,
    stride_grad,
    COSINE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cm = cols < D
    i64 = i.to(tl.int64)
    d_i = tl.load(d_ptr + i)
    w_i = tl.load(w_ptr + i)
    h_i = tl.load(h_ptr + i).to(tl.int64)
    co_i = tl.load(c_other_ptr + i)
    co_h = tl.load(c_other_ptr + h_i)
    o_i = tl.load(other_ptr + i64 * stride_other + cols, mask=cm, other=0.0).to(tl.float32)
    o_h = tl.load(other_ptr + h_i * stride_other + cols, mask=cm, other=0.0).to(tl.float32)
    acc = (d_i * co_i) * o_i + (w_i * co_h) * o_h
    A = d_i * tl.load(s_ptr + i) + w_i * tl.load(m_ptr + i)
    start = tl.load(offsets_ptr + i)
    end = tl.load(offsets_ptr + i + 1)
    offs_s = tl.arange(0, BLOCK_S)
    for k0 in range(start, end, BLOCK_S):
        ks = k0 + offs_s
        km = ks < end
        j = tl.load(order_ptr + ks, mask=km, other=0).to(tl.int64)
        u = tl.load(u_ptr + j, mask=km, other=0.0)
        live = km & (u != 0.0)  # inactive hinges send nothing: their rows are not read
        cj = tl.load(c_other_ptr + j, mask=live, other=0.0)
        rows = tl.load(
            other_ptr + j[:, None] * stride_other + cols[None, :], mask=live[:, None] & cm[None, :], other=0.0
        ).to(tl.float32)
        acc += tl.sum((u * cj)[:, None] * rows, axis=0)
        A += tl.sum(tl.where(live, u * tl.load(n_ptr + j, mask=live, other=0.0), 0.0), axis=0)
    if COSINE:
        c_i = tl.load(c_own_ptr + i)
        # ‖row‖ ≤ ε: normalisation divides by the constant ε, which has no projection term
        A = tl.where(c_i * 1e-12 < 1.0, A, 0.0)  # ε as F.normalize
        s_own = tl.load(own_ptr + i64 * stride_own + cols, mask=cm, other=0.0).to(tl.float32)
        acc = c_i * (acc - (A * c_i) * s_own)
    tl.store(grad_ptr + i64 * stride_grad + cols, acc, mask=cm)


def _config(D: int, interpret: bool) -> dict:
    if interpret:
        return dict(BLOCK_S=4, BLOCK_D=16, num_warps=4)
    # 8 bf16 (16 bytes) per thread and load at D = 1024 with 4 warps
    return dict(BLOCK_S=8, BLOCK_D=min(1024, max(16, triton.next_power_of_2(D))), num_warps=4)


def senders_by_destination(hard: torch.Tensor, B: int):
    """``order`` (B,): the senders sorted by the row they send to (stable: ascending sender within a
    row), ``offsets`` (B + 1,): where each row's segment starts. No device synchronisation."""
    order = torch.argsort(hard, stable=True)
    offsets = torch.searchsorted(hard[order], torch.arange(B + 1, device=hard.device, dtype=hard.dtype))
    return order, offsets


def mh_side_triton(own, other, c_own, c_other, d, s_ii, w_own, hard_own, val_own, w_in, hard_in, val_in, cosine):
    """The gradient of one side of the paired max violation (see the module docstring), in
    ``own``'s dtype. Vectors are (B,) float32 (``val_*`` may hold −inf where a term has no
    negative, B = 1), indices int64; own and other (B, D) contiguous rows."""
    own, other = own.contiguous(), other.contiguous()
    B, D = own.shape
    out = torch.empty_like(own)
    if B == 0 or D == 0:
        return out.zero_()
    f32 = torch.float32
    order, offsets = senders_by_destination(hard_in, B)
    cfg = _config(D, is_interpreting())
    jitted(_mh_side_kernel)[(B, triton.cdiv(D, cfg["BLOCK_D"]))](
        own,
        other,
        out,
        c_own.to(f32).contiguous(),
        c_other.to(f32).contiguous(),
        d.to(f32).contiguous(),
        s_ii.to(f32).contiguous(),
        w_own.to(f32).contiguous(),
        hard_own.contiguous(),
        val_own.to(f32).nan_to_num(neginf=0.0),
        w_in.to(f32).contiguous(),
        val_in.to(f32).nan_to_num(neginf=0.0),
        order,
        offsets,
        D,
        own.stride(0),
        other.stride(0),
        out.stride(0),
        COSINE=bool(cosine),
        BLOCK_S=cfg["BLOCK_S"],
        BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"],
    )
    return out
