"""Fused Triton kernel: per-row and per-column max/argmax of the score matrix over negatives.

``negative_max_triton(x, y, x_labels, y_labels, self_ref)`` computes, for ``S = x @ y.T``
(fp32 accumulation, never rounded to 16 bits), restricted to the negative pairs
``(i, j)`` (``x_labels[i] != y_labels[j]``, and ``i != j`` when ``self_ref``):

* ``row_val[i] = max_j S[i, j]`` and ``row_idx[i]`` its argmax (lowest ``j`` on ties),
* ``col_val[j] = max_i S[i, j]`` and ``col_idx[j]`` its argmax (lowest ``i`` on ties),

with ``-inf`` / index ``0`` for a row or column without any negative. No ``B x M``
tensor is ever written to memory: each program computes score tiles with ``tl.dot`` in
registers, masks them and reduces them in the epilogue.

Work decomposition (deterministic, no atomics). The ``nrb x nct`` grid of
``BLOCK_M x BLOCK_N`` tiles is cut into ``P x Q`` rectangles of ``RB_PER x CT_PER`` tiles;
program ``(p, q)`` owns one rectangle. It loops over its row blocks and, inside, over its
column tiles (so the row running max lives in registers), and keeps the column running
max of its rectangle in a partial buffer ``col_part[p, :]`` that only it reads and writes.
At the end of each row block it writes ``row_part[q, rows]``. A tiny torch reduction then
combines the ``Q`` row partials and the ``P`` column partials (max, then lowest index among
equal maxima). Extra memory: ``(Q * B + P * M) * 8`` bytes (32 MiB at B = M = 65,536 with
P = Q = 32).

No autograd here: the loss gathers the selected scores with autograd itself.

Imports without triton, like every ``triton_*`` module (:mod:`~vse_losses.ops.triton_common`).
"""

from __future__ import annotations

import torch

from .triton_common import (  # triton, tl: None without triton
    choose_groups,
    device_arch,
    even_shape,
    for_arch,
    is_interpreting,
    jitted,
    mma_from_registers,
    num_sms,
    pair_operands,
    score_tile,
    tile_args,
    tl,
)

_INT32_MAX = 2147483647


def _negative_max_kernel(
    x_ptr,
    y_ptr,
    xl_ptr,
    yl_ptr,
    rx_ptr,
    ry_ptr,  # rx, ry: row / column scales (SCALED)
    row_val_ptr,
    row_idx_ptr,  # (Q, B) partials
    col_val_ptr,
    col_idx_ptr,  # (P, M) partials, pre-filled with -inf / 0
    B,
    M,
    D,
    stride_x,
    stride_y,
    RB_PER,
    CT_PER,
    SELF_REF: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    nrb = tl.cdiv(B, BLOCK_M)
    nct = tl.cdiv(M, BLOCK_N)
    rb_start = pid_p * RB_PER
    rb_end = tl.minimum(rb_start + RB_PER, nrb)
    ct_start = pid_q * CT_PER
    ct_end = tl.minimum(ct_start + CT_PER, nct)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)

    for rb in range(rb_start, rb_end):
        rows = rb * BLOCK_M + offs_m
        row_ok = rows < B
        xl = tl.load(xl_ptr + rows, mask=row_ok, other=0)
        if SCALED:
            rx = tl.load(rx_ptr + rows, mask=row_ok, other=1.0)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        run_v = tl.full([BLOCK_M], float("-inf"), tl.float32)
        run_i = tl.zeros([BLOCK_M], dtype=tl.int32)
        for ct in range(ct_start, ct_end):
            cols = ct * BLOCK_N + offs_n
            col_ok = cols < M
            y_cols = y_ptr + cols.to(tl.int64)[None, :] * stride_y
            acc = score_tile(x_rows, y_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
            if SCALED:  # cosine of raw embeddings: s_ij = rx_i ry_j x_i·y_j
                ry = tl.load(ry_ptr + cols, mask=col_ok, other=1.0)
                acc = (acc * rx[:, None]) * ry[None, :]
            # ---- negatives mask
            yl = tl.load(yl_ptr + cols, mask=col_ok, other=0)
            neg = xl[:, None] != yl[None, :]
            if not EVEN_M:
                neg = neg & row_ok[:, None]
            if not EVEN_N:
                neg = neg & col_ok[None, :]
            if SELF_REF:
                # only tiles that meet the diagonal pay for the i != j test
                if (rb * BLOCK_M < (ct + 1) * BLOCK_N) & (ct * BLOCK_N < (rb + 1) * BLOCK_M):
                    neg = neg & (rows[:, None] != cols[None, :])
            s = tl.where(neg, acc, float("-inf"))
            # ---- row reduction (running over column tiles; strict '>' keeps the lower j)
            t_max, t_loc = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
            t_arg = ct * BLOCK_N + t_loc
            upd = t_max > run_v
            run_v = tl.where(upd, t_max, run_v)
            run_i = tl.where(upd, t_arg, run_i)
            # ---- column reduction for this row block, merged into this program's partial
            c_max, c_loc = tl.max(s, axis=0, return_indices=True, return_indices_tie_break_left=True)
            c_arg = rb * BLOCK_M + c_loc
            c_ptr = pid_p * M + cols
            tl.debug_barrier()  # make the previous row block's stores visible to all threads
            old_v = tl.load(col_val_ptr + c_ptr, mask=col_ok, other=float("-inf"))
            old_i = tl.load(col_idx_ptr + c_ptr, mask=col_ok, other=0)
            c_upd = c_max > old_v  # row blocks increase: strict '>' keeps the lower i
            tl.store(col_val_ptr + c_ptr, tl.where(c_upd, c_max, old_v), mask=col_ok)
            tl.store(col_idx_ptr + c_ptr, tl.where(c_upd, c_arg, old_i), mask=col_ok)
        r_ptr = pid_q * B + rows
        tl.store(row_val_ptr + r_ptr, run_v, mask=row_ok)
        tl.store(row_idx_ptr + r_ptr, run_i, mask=row_ok)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def _default_config(dtype: torch.dtype, interpret: bool, even: bool, aligned: bool, arch: int = 90) -> dict:
    """:func:`_default_tiles` for the GPU architecture ``arch`` (:func:`for_arch`; the running
    maximum is one value per row and column, so the 128-wide tiles stay, but for float32 before
    tensor cores read registers, whose 64×128 tiles spill a few bytes there)."""
    cfg = _default_tiles(dtype, interpret, even, aligned)
    if mma_from_registers(arch) and dtype == torch.float32 and not interpret:
        cfg = dict(cfg, BLOCK_M=64, BLOCK_N=64)
    return for_arch(cfg, arch, dtype)


def _default_tiles(dtype: torch.dtype, interpret: bool, even: bool, aligned: bool) -> dict:
    """Tiles. ``even``: B and M multiples of 128 and D of 64; ``aligned``: D a multiple of 64 (the
    rows' loads aligned, B or M ragged). Chosen so that every variant compiles for sm_90 without
    register spills, as triton specializes it at run time (tests/ops/test_triton_compile.py,
    triton 3.6 and 3.8)."""
    if interpret:
        # the CPU interpreter is slow per op: small tiles keep tests quick and exercise
        # the multi-tile logic at small sizes
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=16, num_warps=8, num_stages=3)
    if even:  # aligned loads, pipelined four deep (128 KiB of shared memory)
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)
    if aligned:  # pipelined too, with the row masks: 128x128 spills in the diagonal+scaled variant
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4)
    # unaligned rows load element by element: the masks and addresses cost registers
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=4)


def _reduce_partials(val: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine (G, L) partial maxima: max over G, lowest index among equal maxima; -inf -> 0."""
    if val.shape[0] == 1:
        # one program wrote every entry: it keeps index 0 wherever no negative beat -inf
        return val[0], idx[0].long()
    best = val.amax(dim=0)
    cand = torch.where(val == best.unsqueeze(0), idx, torch.full_like(idx, _INT32_MAX))
    bi = cand.amin(dim=0).long()
    # no negative (-inf), or a NaN max: index 0, always a valid index
    bad = (best == float("-inf")) | (bi == _INT32_MAX) | torch.isnan(best)
    bi = torch.where(bad, torch.zeros_like(bi), bi)
    return best.contiguous(), bi.contiguous()


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------
@torch.no_grad()
def negative_max_triton(
    x: torch.Tensor,
    y: torch.Tensor,
    x_labels: torch.Tensor,
    y_labels: torch.Tensor,
    self_ref: bool = False,
    *,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    _groups: tuple[int, int] | None = None,
    _config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column max/argmax of ``x @ y.T`` over negative pairs, fused in one pass.

    Args:
        x: (B, D) queries, y: (M, D) keys; fp32 / fp16 / bf16 (promoted to a common dtype; fp32
            products in full fp32, see :func:`~vse_losses.ops.triton_common.score_tile`).
        x_labels: (B,) integer labels, y_labels: (M,) integer labels.
        self_ref: x and y are the same embeddings: the pair (i, i) is never a negative.
        scales: ``(c_x (B,), c_y (M,))``: the scores are ``c_i c_j x_i·y_j`` (fp32 scales applied
            to the fp32 tile; the cosine of raw embeddings with c = 1/‖·‖).
        _groups, _config: test hooks (tests and gpu_check's tile sweep), not for the losses:
            ``(P, Q)`` in place of the work split chosen from the SM count; overrides of the tiles
            (BLOCK_M / BLOCK_N / BLOCK_K / num_warps / num_stages).

    Returns:
        row_val (B,) fp32, row_idx (B,) int64, col_val (M,) fp32, col_idx (M,) int64.
        A row/column without a negative has value -inf and index 0. Ties: lowest index.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x (B, D) and y (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    B, D = x.shape
    M = y.shape[0]
    if x_labels.shape != (B,) or y_labels.shape != (M,):
        raise ValueError(
            f"labels must be 1-D of lengths {B} and {M}, got {tuple(x_labels.shape)} and {tuple(y_labels.shape)}"
        )
    dev = x.device
    if B == 0 or M == 0:
        return (
            torch.full((B,), float("-inf"), device=dev, dtype=torch.float32),
            torch.zeros((B,), device=dev, dtype=torch.int64),
            torch.full((M,), float("-inf"), device=dev, dtype=torch.float32),
            torch.zeros((M,), device=dev, dtype=torch.int64),
        )
    if D == 0:  # every score is 0
        x = x.new_zeros((B, 1))
        y = y.new_zeros((M, 1))
        D = 1

    x, y, xl, yl = pair_operands(x, y, x_labels, y_labels, "negative_max_triton")
    dtype = x.dtype

    interpret = is_interpreting()
    cfg = dict(_default_config(dtype, interpret, even_shape(B, M, D), D % 64 == 0, device_arch(dev)))
    if _config:
        cfg.update(_config)
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    nrb = -(-B // BM)
    nct = -(-M // BN)
    if _groups is None:
        P, Q = choose_groups(nrb, nct, B, M, num_sms(dev))
    else:
        P, Q = max(1, min(int(_groups[0]), nrb)), max(1, min(int(_groups[1]), nct))
    rb_per = -(-nrb // P)
    ct_per = -(-nct // Q)
    P = -(-nrb // rb_per)  # no empty programs
    Q = -(-nct // ct_per)

    row_pv = torch.empty((Q, B), device=dev, dtype=torch.float32)
    row_pi = torch.empty((Q, B), device=dev, dtype=torch.int32)
    col_pv = torch.full((P, M), float("-inf"), device=dev, dtype=torch.float32)
    col_pi = torch.zeros((P, M), device=dev, dtype=torch.int32)

    if scales is None:
        rx = ry = row_pv  # never read (SCALED is False)
    else:
        rx, ry = (s.to(device=dev, dtype=torch.float32).contiguous() for s in scales)
    jitted(_negative_max_kernel)[(P, Q)](
        x,
        y,
        xl,
        yl,
        rx,
        ry,
        row_pv,
        row_pi,
        col_pv,
        col_pi,
        B,
        M,
        D,
        x.stride(0),
        y.stride(0),
        rb_per,
        ct_per,
        SELF_REF=bool(self_ref),
        SCALED=scales is not None,
        **tile_args(cfg, B, M, D),
    )
    row_val, row_idx = _reduce_partials(row_pv, row_pi)
    col_val, col_idx = _reduce_partials(col_pv, col_pi)
    return row_val, row_idx, col_val, col_idx
