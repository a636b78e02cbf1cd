"""Fused Triton kernels: per-row l_p norm of the hinge of the score matrix, with backward.

For queries ``q`` (N, D), keys (M, D), per-row thresholds ``t`` (N,) and

    h_ij = max(0, q_i . k_j - t_i)   if q_labels[i] != k_labels[j] and j != q_self[i]
    h_ij = 0                         otherwise,

``hinge_norm_rows_triton`` returns ``T_i = (sum_j h_ij^p)^(1/p)`` (fp32, N), p >= 1.

* p == 1 is the sum of hinges (SH), p -> inf tends to the max violation (MH).
* Forward: one program per ``BLOCK_M`` rows loops over key tiles; each score tile is made by
  ``tl.dot`` in registers (fp32) and reduced online, flash-attention style: a running max
  ``m_i`` of ``h`` and ``sum_j (h_ij / m_i)^p``, rescaled when ``m_i`` grows; a row whose
  hinges are all 0 gives exactly 0. Nothing N x M is written.
* Backward, given ``g`` (N,): ``W_ij = g_i (h_ij / T_i)^(p-1)`` where ``h_ij > 0`` (p == 1:
  ``g_i 1[h_ij > 0]``), 0 elsewhere and on rows with ``T_i == 0``;
  ``grad_q = W @ keys``, ``grad_keys = W^T @ q``, ``grad_t = -W.sum(1)``.
  A Triton kernel recomputes the score tiles of a chunk of rows and writes their weights (in
  the operand dtype, scaled by max |g| so that half precision keeps them) and row sums, and
  cuBLAS multiplies the chunk twice: its rows of grad_q, and its contribution to grad_keys,
  accumulated in float32 (deterministic, no atomics). The backward costs one recomputed score
  product in Triton and two cuBLAS products, whatever D; the chunk holds ``W_CHUNK_ELEMENTS``
  weights.
* Both kernels take a SCALED variant (the cosine folded in, as :mod:`~.triton_lse_pairs`): the
  scores are ``c_i c_j q_i . k_j`` with row and column scales, and the weight kernel writes
  ``c_i W_ij c_j``. ``hinge_norm_rows_triton`` itself is unscaled; ``hinge_norm_pairs``
  (:mod:`~.triton_hinge_norm_pairs`) runs the scaled kernels.

Imports without triton (``TRITON_AVAILABLE`` False); kernels are jitted lazily at first use
so that ``TRITON_INTERPRET=1`` set before the first call selects the CPU interpreter.
"""

from __future__ import annotations

import math

import torch

from .lp_norm import lp_norm
from .tiling import Matmul
from .triton_common import (  # triton, tl: None without triton
    TRITON_AVAILABLE,
    chunk_grid,
    chunk_score_tile,
    device_arch,
    even_shape,
    for_arch,
    is_interpreting,
    jitted,
    kernel_helper,
    lp_merge_tile,
    pair_operands,
    pow_masked,
    pow_pos,
    recip_pos,
    score_tile,
    store_chunk,
    tile_args,
    tl,
    triton,
)

__all__ = ["TRITON_AVAILABLE", "HingeNormRowsTriton", "hinge_norm_rows_triton"]


# ----------------------------------------------------------------------------------------
# Kernels (plain functions; jitted lazily by ``jitted()``)
# ----------------------------------------------------------------------------------------
def _hinge_norm_fwd_kernel(
    q_ptr,
    k_ptr,
    t_ptr,
    ql_ptr,
    kl_ptr,
    qs_ptr,
    cq_ptr,
    ck_ptr,  # cq, ck: scales of q's rows and of the keys (SCALED)
    out_ptr,
    N,
    M,
    D,
    stride_q,
    stride_k,
    p,
    inv_p,
    P_MODE: tl.constexpr,  # 1: p == 1, 2: p == 2, 0: any other p
    SCALED: tl.constexpr,  # the scores are cq_i ck_j q_i·k_j (the cosine folded in)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    offs_n = tl.arange(0, BLOCK_N)
    t = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
    ql = tl.load(ql_ptr + rows, mask=row_ok, other=0)
    qs = tl.load(qs_ptr + rows, mask=row_ok, other=-1)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q
    if SCALED:
        cq = tl.load(cq_ptr + rows, mask=row_ok, other=1.0)

    run_m = tl.zeros([BLOCK_M], dtype=tl.float32)  # running max of h (h >= 0)
    run_s = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum (h / run_m)^p   (P_MODE 1: sum h)
    for n0 in range(0, M, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < M
        k_cols = k_ptr + cols.to(tl.int64)[None, :] * stride_k
        acc = score_tile(q_rows, k_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
        if SCALED:
            ck = tl.load(ck_ptr + cols, mask=col_ok, other=1.0)
            acc = (acc * cq[:, None]) * ck[None, :]
        kl = tl.load(kl_ptr + cols, mask=col_ok, other=0)
        valid = (ql[:, None] != kl[None, :]) & (cols[None, :] != qs[:, None])
        if not EVEN_M:
            valid = valid & row_ok[:, None]
        if not EVEN_N:
            valid = valid & col_ok[None, :]
        h = tl.where(valid, tl.maximum(acc - t[:, None], 0.0), 0.0)
        run_m, run_s = lp_merge_tile(run_m, run_s, h, p, P_MODE, 1)
    if P_MODE == 1:
        out = run_s
    elif P_MODE == 2:
        out = run_m * tl.sqrt(run_s)
    else:
        # run_s >= 1 wherever run_m > 0
        out = tl.where(run_m > 0.0, run_m * pow_pos(tl.maximum(run_s, 1.0), inv_p), 0.0)
    tl.store(out_ptr + rows, out, mask=row_ok)


@kernel_helper
def hinge_weights(s, valid, t, T, g, pm1, P_MODE: tl.constexpr):
    """w(s − t; T, g) = g ((s − t) / T)^(p−1) on the valid entries where s − t > 0, else 0; t, T, g
    per row (BLOCK_M, 1) or per column (1, BLOCK_N). T == 0: no hinge was active in the forward,
    and a recomputed score that rounds the other way must not turn into a weight (1 / T)."""
    invT = recip_pos(T)
    g = tl.where(T > 0.0, g, 0.0)
    h = s - t
    act = valid & (h > 0.0)
    if P_MODE == 1:
        w = tl.where(act, g, 0.0)
    elif P_MODE == 2:
        w = tl.where(act, h * (g * invT), 0.0)
    else:
        # masked by act, not by r > 0: an infinite hinge (inf / inf) gives NaN, as in the torch path
        w = tl.where(act, g * pow_masked(h * invT, pm1, act), 0.0)
    return w


def _hinge_weight_kernel(
    q_ptr,
    k_ptr,
    w_ptr,
    rs_ptr,
    cs_ptr,
    tq_ptr,
    Tq_ptr,
    gq_ptr,
    lq_ptr,
    sq_ptr,
    tk_ptr,
    Tk_ptr,
    gk_ptr,
    lk_ptr,
    sk_ptr,
    cq_ptr,
    ck_ptr,  # cq, ck: scales of q's rows and of the keys (SCALED)
    r0,
    R,
    M,
    D,
    stride_q,
    stride_k,
    stride_w,
    stride_rs,
    stride_cs,
    pm1,
    P_MODE: tl.constexpr,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    SELF_Q: tl.constexpr,
    SELF_K: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of the weights of the rows r0 .. r0 + R of q against all keys:

        W[i - r0, j] = [ROW_TERM] w(s_ij - tq_i; Tq_i, gq_i) + [COL_TERM] w(s_ij - tk_j; Tk_j, gk_j)

    on the valid (i, j), 0 elsewhere; w(h; T, g) = g (h / T)^(p-1) for h > 0 and T > 0, else 0.
    rs[pid_n, i - r0] = this tile's row sum of the ROW_TERM part (fp32; summed over pid_n later);
    cs[pid_m, j] = this tile's column sum of the COL_TERM part (summed over pid_m later).
    (i, j) is valid iff lq_i != lk_j, j != sq_i (SELF_Q) and i != sk_j (SELF_K).
    SCALED: the scores are ``s_ij = cq_i ck_j q_i·k_j`` and the tile written is ``cq_i W_ij ck_j``
    (W̃, the weights of q and keys themselves up to the normalisation's radial share); the sums
    are W's (the thresholds' gradient).
    """
    pid_m, pid_n, loc, rows, row_ok, cols, col_ok, acc = chunk_score_tile(
        q_ptr, k_ptr, r0, R, M, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K
    )
    lq = tl.load(lq_ptr + rows, mask=row_ok, other=0)
    lk = tl.load(lk_ptr + cols, mask=col_ok, other=0)
    valid = (lq[:, None] != lk[None, :]) & row_ok[:, None] & col_ok[None, :]
    if SELF_Q:
        sq = tl.load(sq_ptr + rows, mask=row_ok, other=-1)
        valid = valid & (cols[None, :] != sq[:, None])
    if SELF_K:
        sk = tl.load(sk_ptr + cols, mask=col_ok, other=-1)
        valid = valid & (rows[:, None] != sk[None, :])
    if SCALED:  # the scales as row and column vectors: no tile of them held beside w
        cq = tl.load(cq_ptr + rows, mask=row_ok, other=1.0)
        ck = tl.load(ck_ptr + cols, mask=col_ok, other=1.0)
        acc = (acc * cq[:, None]) * ck[None, :]
    w = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ROW_TERM:
        w_row = hinge_weights(
            acc,
            valid,
            tl.load(tq_ptr + rows, mask=row_ok, other=0.0)[:, None],
            tl.load(Tq_ptr + rows, mask=row_ok, other=0.0)[:, None],
            tl.load(gq_ptr + rows, mask=row_ok, other=0.0)[:, None],
            pm1,
            P_MODE,
        )
        tl.store(rs_ptr + pid_n * stride_rs + loc, tl.sum(w_row, axis=1), mask=row_ok)
        w += w_row
    if COL_TERM:
        w_col = hinge_weights(
            acc,
            valid,
            tl.load(tk_ptr + cols, mask=col_ok, other=0.0)[None, :],
            tl.load(Tk_ptr + cols, mask=col_ok, other=0.0)[None, :],
            tl.load(gk_ptr + cols, mask=col_ok, other=0.0)[None, :],
            pm1,
            P_MODE,
        )
        tl.store(cs_ptr + pid_m * stride_cs + cols, tl.sum(w_col, axis=0), mask=col_ok)
        w += w_col
    if SCALED:
        w = (w * cq[:, None]) * ck[None, :]
    store_chunk(w_ptr, w, loc, cols, row_ok, col_ok, stride_w)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
# Elements of one chunk of backward weights (rows × M, in the operand dtype: 256 MiB in bf16).
# Large chunks keep cuBLAS busy and the per-chunk overhead small; the chunk is the only
# buffer of the backward that grows with M, and it does not grow with B.
W_CHUNK_ELEMENTS = 1 << 27


def _fwd_config(dtype: torch.dtype, interpret: bool, even: bool, arch: int = 90, *, scaled: bool = False) -> dict:
    """:func:`_fwd_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_fwd_tiles(dtype, interpret, even, scaled), arch, dtype, narrow=True)


def _fwd_tiles(dtype: torch.dtype, interpret: bool, even: bool, scaled: bool = False) -> dict:
    """Tiles of the forward kernel. ``even``: N and M multiples of 128 and D of 64; ``scaled``:
    the SCALED variant. Chosen so that every variant compiles for sm_90 without register spills,
    as triton specializes it at run time (tests/ops/test_triton_compile.py, triton 3.6 and 3.8)."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        # scaled, unaligned: the scales beside a general p's temporaries spill at BLOCK_K = 32
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=16 if scaled and not even else 32, num_warps=8, num_stages=3)
    if even:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    # the unaligned, masked loads of ragged shapes: 128x128 spills
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


def _weight_config(
    dtype: torch.dtype, interpret: bool, p_mode: int = 1, even: bool = True, arch: int = 90, *, scaled: bool = False
) -> dict:
    """:func:`_weight_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_weight_tiles(dtype, interpret, p_mode, even, scaled), arch, dtype, narrow=True)


def _weight_tiles(
    dtype: torch.dtype, interpret: bool, p_mode: int = 1, even: bool = True, scaled: bool = False
) -> dict:
    """Tiles of the backward's weight kernel (no spills on sm_90 in any variant; ``scaled``: the
    SCALED one). BLOCK_M, the multiple of the chunk rows, depends on the dtype alone."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3)
    if even and p_mode != 0 and not scaled:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    # exp2/log2 temporaries of a general p, the scales of the cosine (p = 2 spills 40 bytes, p = 1
    # is at 255 registers), or unaligned masked loads: 128x128 spills
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


def _chunk_rows(n_rows: int, n_cols: int, block: int) -> int:
    """Rows per chunk of weights: W_CHUNK_ELEMENTS // n_cols, a multiple of ``block``, at least one block."""
    rows = max(block, (W_CHUNK_ELEMENTS // max(n_cols, 1)) // block * block)
    return min(rows, n_rows) if n_rows > 0 else 0


def _p_mode(p: float) -> int:
    return 1 if p == 1.0 else (2 if p == 2.0 else 0)


def _prep(q, keys, t, q_labels, k_labels, q_self):
    qc, kc, ql, kl = pair_operands(q, keys, q_labels, k_labels, "hinge_norm_rows_triton")
    dev = q.device
    tc = t.to(device=dev, dtype=torch.float32).contiguous()
    return qc, kc, tc, ql, kl, q_self.to(device=dev, dtype=torch.int64).contiguous()


def _forward(q, keys, t, ql, kl, qs, p, *, scales=None, config: dict | None = None):
    """T (N,) float32 by the forward kernel (inputs as ``_prep`` returns them). ``scales``: ``(c_q
    (N,), c_k (M,))`` float32, the scores ``c_i c_j q_i·k_j`` (the cosine), or None. ``config``:
    tile overrides, for gpu_check's tile sweep."""
    N, D = q.shape
    M = keys.shape[0]
    out = torch.zeros((N,), device=q.device, dtype=torch.float32)
    if N == 0 or M == 0 or D == 0:
        # D == 0: every score is 0, h = max(0, -t)
        if N and M and D == 0:
            return _dense_small(q, keys, t, ql, kl, qs, p)
        return out
    cfg = dict(
        _fwd_config(q.dtype, is_interpreting(), even_shape(N, M, D), device_arch(q.device), scaled=scales is not None)
    )
    if config:
        cfg.update({k: v for k, v in config.items() if k in cfg})
    BM = cfg["BLOCK_M"]
    cq, ck = scales or (out, out)  # out: never read (SCALED is False)
    jitted(_hinge_norm_fwd_kernel)[(triton.cdiv(N, BM),)](
        q,
        keys,
        t,
        ql,
        kl,
        qs,
        cq,
        ck,
        out,
        N,
        M,
        D,
        q.stride(0),
        keys.stride(0),
        float(p),
        1.0 / float(p),
        P_MODE=_p_mode(p),
        SCALED=scales is not None,
        **tile_args(cfg, N, M, D),
    )
    return out


def _weights(
    q, keys, r0, R, row_term, col_term, ql, kl, qs, ks, p, w_dtype, *, scales=None, config: dict | None = None
):
    """The weights of rows r0 .. r0 + R of q against every key (see ``_hinge_weight_kernel``).

    row_term / col_term: ``(t, T, g)`` fp32 vectors over the rows of q / over the keys, or None;
    qs / ks: self indices over the rows of q / over the keys, or None; ``scales``: ``(c_q, c_k)``
    float32 over all rows of q / the keys (the cosine: W̃ = c_q W c_k is written), or None;
    ``config``: tile overrides, for gpu_check's tile sweep. Returns ``W`` (R, M) in ``w_dtype``,
    the row sums of its row term (R,) fp32 and the column sums of its column term over these rows
    (M,) fp32 (None for a term not given), both of W itself.
    """
    M, D = keys.shape
    even, arch = even_shape(R, M, D), device_arch(q.device)
    cfg = dict(_weight_config(q.dtype, is_interpreting(), _p_mode(p), even, arch, scaled=scales is not None))
    if config:
        cfg.update({k: v for k, v in config.items() if k in cfg})
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    n_n = triton.cdiv(M, BN)
    W = torch.empty((R, M), device=q.device, dtype=w_dtype)
    rs = torch.empty((n_n, R), device=q.device, dtype=torch.float32) if row_term else W
    cs = torch.empty((triton.cdiv(R, BM), M), device=q.device, dtype=torch.float32) if col_term else W
    unused = ql  # any tensor, for pointers a constexpr branch never reads
    tq, Tq, gq = row_term or (unused,) * 3
    tk, Tk, gk = col_term or (unused,) * 3
    cq, ck = scales or (unused, unused)
    jitted(_hinge_weight_kernel)[chunk_grid(R, M, cfg)](
        q,
        keys,
        W,
        rs,
        cs,
        tq,
        Tq,
        gq,
        ql,
        unused if qs is None else qs,
        tk,
        Tk,
        gk,
        kl,
        unused if ks is None else ks,
        cq,
        ck,
        r0,
        R,
        M,
        D,
        q.stride(0),
        keys.stride(0),
        W.stride(0),
        rs.stride(0),
        cs.stride(0),
        float(p) - 1.0,
        P_MODE=_p_mode(p),
        ROW_TERM=row_term is not None,
        COL_TERM=col_term is not None,
        SELF_Q=qs is not None,
        SELF_K=ks is not None,
        SCALED=scales is not None,
        **tile_args(cfg, R, M, D),
    )
    return W, (rs.sum(0) if row_term else None), (cs.sum(0) if col_term else None)


def _grad_scale(*gs):
    """One scale for the output gradients, so that the weights stored in half precision are
    O(1) (a mean over B pairs gives g = 1/B, below fp16's normal range at large B); None when
    there is no gradient."""
    gs = [g for g in gs if g is not None and g.numel()]
    if not gs:
        return None
    m = torch.stack([g.abs().max() for g in gs]).max()
    return torch.where(m > 0, m, torch.ones_like(m))


def _weighted_products(q, keys, row_term, col_term, ql, kl, qs, p, need_q=True, need_k=True, scales=None):
    """One pass over chunks of rows of W, the weights of q's rows against every key (see
    ``_weights``): ``W keys`` (each chunk's rows complete), ``Wᵀ q`` (accumulated), the row sums
    of W's row term and the column sums of its column term — float32, as the terms' g give them.
    Each chunk is recomputed by the Triton kernel and multiplied by cuBLAS. ``scales``: ``(c_q,
    c_k)`` float32, the cosine: the products are then of W̃ = c_q W c_k (the caller removes the
    normalisation's radial share). → (gq, gk, rows, cols), None for what was not asked for."""
    N, D = q.shape
    M = keys.shape[0]
    mm = Matmul(q.dtype, q.device)
    keys_op, q_op = mm.operand(keys), mm.operand(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    gq = torch.zeros((N, D), **f32) if need_q else None
    gk = torch.zeros((M, D), **f32) if need_k else None
    rows = torch.zeros((N,), **f32) if row_term else None
    cols = torch.zeros((M,), **f32) if col_term else None
    step = _chunk_rows(N, M, _weight_config(q.dtype, is_interpreting(), arch=device_arch(q.device))["BLOCK_M"])
    for r0 in range(0, N, step):
        R = min(step, N - r0)
        W, rsum, csum = _weights(
            q, keys, r0, R, row_term, col_term, ql, kl, qs, None, p, mm.operand_dtype, scales=scales
        )
        if need_q:
            gq[r0 : r0 + R] = mm(W, keys_op)
        if need_k:
            mm.add_product(gk, W.t(), q_op[r0 : r0 + R])
        if rsum is not None:
            rows[r0 : r0 + R] = rsum
        if csum is not None:
            cols += csum
    return gq, gk, rows, cols


def _dense_small(q, keys, t, ql, kl, qs, p):
    # degenerate D == 0 only (scores are all 0): plain torch
    N, M = q.shape[0], keys.shape[0]
    valid = (ql[:, None] != kl[None, :]) & (torch.arange(M, device=q.device)[None, :] != qs[:, None])
    h = torch.where(valid, (-t)[:, None].clamp_min(0).expand(N, M), torch.zeros((), device=q.device))
    return lp_norm(h, p, dim=1)


class HingeNormRowsTriton(torch.autograd.Function):
    """T = (sum_j h_ij^p)^(1/p) per row; see the module docstring.

    forward(q, keys, t, q_labels, k_labels, q_self, p)
    """

    @staticmethod
    def forward(ctx, q, keys, t, q_labels, k_labels, q_self, p):
        p = float(p)
        if not (p >= 1.0) or math.isinf(p):
            raise ValueError(f"p must be a finite number >= 1, got {p}")
        qc, kc, tc, ql, kl, qs = _prep(q, keys, t, q_labels, k_labels, q_self)
        T = _forward(qc, kc, tc, ql, kl, qs, p)
        ctx.save_for_backward(qc, kc, tc, ql, kl, qs, T)
        ctx.p = p
        ctx.dtypes = (q.dtype, keys.dtype, t.dtype)
        return T

    @staticmethod
    def backward(ctx, g):
        qc, kc, tc, ql, kl, qs, T = ctx.saved_tensors
        need_q, need_k, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        N, D = qc.shape
        M = kc.shape[0]
        q_dtype, k_dtype, t_dtype = ctx.dtypes
        if g is None:
            g = torch.zeros_like(T)
        f32 = dict(device=qc.device, dtype=torch.float32)
        grad_q = torch.zeros((N, D), **f32) if need_q else None
        grad_k = torch.zeros((M, D), **f32) if need_k else None
        grad_t = torch.zeros((N,), **f32) if need_t else None
        if N and M and D and (need_q or need_k or need_t):
            # grad_q = W keys, grad_keys = Wᵀ q, grad_t = −W 1, W scaled by 1/scale until the end
            scale = _grad_scale(g)
            term = (tc, T, (g.to(torch.float32) / scale).contiguous())
            gq, gk, rows, _ = _weighted_products(qc, kc, term, None, ql, kl, qs, ctx.p, need_q, need_k)
            grad_q = None if gq is None else gq.mul_(scale)
            grad_k = None if gk is None else gk.mul_(scale)
            grad_t = rows.mul_(-scale) if need_t else None
        if grad_q is not None:
            grad_q = grad_q.to(q_dtype)
        if grad_k is not None:
            grad_k = grad_k.to(k_dtype)
        if grad_t is not None:
            grad_t = grad_t.to(t_dtype)
        return grad_q, grad_k, grad_t, None, None, None, None


def hinge_norm_rows_triton(
    q: torch.Tensor,
    keys: torch.Tensor,
    t: torch.Tensor,
    q_labels: torch.Tensor,
    k_labels: torch.Tensor,
    q_self: torch.Tensor,
    p: float,
) -> torch.Tensor:
    """Per-row ``(sum_j h_ij^p)^(1/p)`` with ``h_ij = [q_i . k_j - t_i]_+`` over valid pairs.

    Args:
        q: (N, D) queries; keys: (M, D); fp32 / fp16 / bf16 (promoted to a common dtype; fp32
            products in full fp32, see :func:`~vse_losses.ops.triton_common.score_tile`).
        t: (N,) thresholds (fp32; differentiable).
        q_labels: (N,), k_labels: (M,) integer labels; pairs with equal labels are excluded.
        q_self: (N,) int64, a key index excluded for each row, or -1 for none.
        p: finite float >= 1 (1: sum of hinges).

    Returns:
        T (N,) fp32; differentiable w.r.t. q, keys and t (grads in their dtypes).
    """
    N, D = q.shape if q.dim() == 2 else (None, None)
    if q.dim() != 2 or keys.dim() != 2 or q.shape[1] != keys.shape[1]:
        raise ValueError(f"expected q (N, D) and keys (M, D), got {tuple(q.shape)} and {tuple(keys.shape)}")
    M = keys.shape[0]
    for name, v, n in (("t", t, N), ("q_labels", q_labels, N), ("k_labels", k_labels, M), ("q_self", q_self, N)):
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    return HingeNormRowsTriton.apply(q, keys, t, q_labels, k_labels, q_self, p)
