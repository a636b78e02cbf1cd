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
  Both products recompute the score tiles: a row-parallel kernel (grad_q, grad_t) and a
  column-parallel kernel (grad_keys) that loops over row tiles, so every output element is
  written by exactly one program (deterministic, no atomics). Each kernel splits D in
  ``BLOCK_D`` chunks of its output (the fp32 accumulator must fit in registers) and
  recomputes the score tile per chunk: the backward costs ``2 * (ceil(D / BLOCK_D) + 1)``
  times the score product (``D <= BLOCK_D``: 4x).

Imports without triton (``TRITON_AVAILABLE`` False); kernels are jitted lazily at first use
so that ``TRITON_INTERPRET=1`` set before the first call selects the CPU interpreter.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .triton_negative_max import TRITON_AVAILABLE, _check_precision, is_interpreting

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl
else:  # pragma: no cover
    triton = None
    tl = None

__all__ = ["TRITON_AVAILABLE", "HingeNormRowsTriton", "hinge_norm_rows_triton"]


# ----------------------------------------------------------------------------------------
# Kernels (plain functions; jitted lazily by ``_kernels()``)
# ----------------------------------------------------------------------------------------
def _hinge_norm_fwd_kernel(
    q_ptr, k_ptr, t_ptr, ql_ptr, kl_ptr, qs_ptr, out_ptr,
    N, M, D,
    stride_q, stride_k,
    p, inv_p,
    P_MODE: tl.constexpr,              # 1: p == 1, 2: p == 2, 0: any other p
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    t = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
    ql = tl.load(ql_ptr + rows, mask=row_ok, other=0)
    qs = tl.load(qs_ptr + rows, mask=row_ok, other=-1)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q

    run_m = tl.zeros([BLOCK_M], dtype=tl.float32)    # running max of h (h >= 0)
    run_s = tl.zeros([BLOCK_M], dtype=tl.float32)    # sum (h / run_m)^p   (P_MODE 1: sum h)
    for n0 in range(0, M, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < M
        k_cols = k_ptr + cols.to(tl.int64)[None, :] * stride_k
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            if EVEN_M and EVEN_K:
                a = tl.load(q_rows + kk[None, :])
            else:
                a = tl.load(q_rows + kk[None, :], mask=row_ok[:, None] & (kk[None, :] < D), other=0.0)
            if EVEN_N and EVEN_K:
                b = tl.load(k_cols + kk[:, None])
            else:
                b = tl.load(k_cols + kk[:, None], mask=col_ok[None, :] & (kk[:, None] < D), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        kl = tl.load(kl_ptr + cols, mask=col_ok, other=0)
        valid = (ql[:, None] != kl[None, :]) & (cols[None, :] != qs[:, None])
        if not EVEN_M:
            valid = valid & row_ok[:, None]
        if not EVEN_N:
            valid = valid & col_ok[None, :]
        h = tl.where(valid, tl.maximum(acc - t[:, None], 0.0), 0.0)
        if P_MODE == 1:
            run_s += tl.sum(h, axis=1)
        else:
            new_m = tl.maximum(run_m, tl.max(h, axis=1))
            inv = tl.where(new_m > 0.0, 1.0 / tl.where(new_m > 0.0, new_m, 1.0), 0.0)
            r = h * inv[:, None]                      # in [0, 1]
            r_old = run_m * inv
            if P_MODE == 2:
                pw = r * r
                scale = r_old * r_old
            else:
                pw = tl.where(r > 0.0, tl.exp2(p * tl.log2(tl.where(r > 0.0, r, 1.0))), 0.0)
                scale = tl.where(r_old > 0.0, tl.exp2(p * tl.log2(tl.where(r_old > 0.0, r_old, 1.0))), 0.0)
            run_s = run_s * scale + tl.sum(pw, axis=1)
            run_m = new_m
    if P_MODE == 1:
        out = run_s
    elif P_MODE == 2:
        out = run_m * tl.sqrt(run_s)
    else:
        # run_s >= 1 wherever run_m > 0
        out = tl.where(run_m > 0.0, run_m * tl.exp2(inv_p * tl.log2(tl.maximum(run_s, 1.0))), 0.0)
    tl.store(out_ptr + rows, out, mask=row_ok)


def _hinge_norm_bwd_rows_kernel(
    q_ptr, k_ptr, t_ptr, ql_ptr, kl_ptr, qs_ptr, T_ptr, g_ptr,
    gq_ptr, gt_ptr,
    N, M, D,
    stride_q, stride_k, stride_gq,
    pm1,
    P_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """grad_q[rows, dchunk] = W[rows, :] @ keys[:, dchunk];  grad_t[rows] = -W[rows, :].sum()."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    t = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
    ql = tl.load(ql_ptr + rows, mask=row_ok, other=0)
    qs = tl.load(qs_ptr + rows, mask=row_ok, other=-1)
    T = tl.load(T_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    pos = T > 0.0
    invT = tl.where(pos, 1.0 / tl.where(pos, T, 1.0), 0.0)
    g = tl.where(pos, g, 0.0)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q

    acc_g = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc_t = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, M, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < M
        k_cols = k_ptr + cols.to(tl.int64)[None, :] * stride_k
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            if EVEN_M and EVEN_K:
                a = tl.load(q_rows + kk[None, :])
            else:
                a = tl.load(q_rows + kk[None, :], mask=row_ok[:, None] & (kk[None, :] < D), other=0.0)
            if EVEN_N and EVEN_K:
                b = tl.load(k_cols + kk[:, None])
            else:
                b = tl.load(k_cols + kk[:, None], mask=col_ok[None, :] & (kk[:, None] < D), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        kl = tl.load(kl_ptr + cols, mask=col_ok, other=0)
        valid = (ql[:, None] != kl[None, :]) & (cols[None, :] != qs[:, None])
        if not EVEN_M:
            valid = valid & row_ok[:, None]
        if not EVEN_N:
            valid = valid & col_ok[None, :]
        h = tl.where(valid, acc - t[:, None], 0.0)
        act = h > 0.0
        if P_MODE == 1:
            w = tl.where(act, g[:, None], 0.0)
        elif P_MODE == 2:
            w = tl.where(act, h * (g * invT)[:, None], 0.0)
        else:
            r = tl.where(act, h * invT[:, None], 1.0)
            w = tl.where(act, g[:, None] * tl.exp2(pm1 * tl.log2(r)), 0.0)
        acc_t += tl.sum(w, axis=1)
        # keys[cols, dchunk]  (BLOCK_N, BLOCK_D)
        kv_ptrs = k_ptr + cols.to(tl.int64)[:, None] * stride_k + dd[None, :]
        if EVEN_N and EVEN_D:
            kv = tl.load(kv_ptrs)
        else:
            kv = tl.load(kv_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc_g = tl.dot(w.to(kv.dtype), kv, acc_g, input_precision=INPUT_PRECISION)
    gq_ptrs = gq_ptr + rows.to(tl.int64)[:, None] * stride_gq + dd[None, :]
    tl.store(gq_ptrs, acc_g.to(gq_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if pid_d == 0:
        tl.store(gt_ptr + rows, -acc_t, mask=row_ok)


def _hinge_norm_bwd_cols_kernel(
    q_ptr, k_ptr, t_ptr, ql_ptr, kl_ptr, qs_ptr, T_ptr, g_ptr,
    gk_ptr,
    N, M, D,
    stride_q, stride_k, stride_gk,
    pm1,
    P_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """grad_keys[cols, dchunk] = W[:, cols].T @ q[:, dchunk], looping over row tiles.

    Here BLOCK_N is the number of key columns a program owns and BLOCK_M the row tile it
    streams; tiles are computed transposed, (BLOCK_N, BLOCK_M) = keys[cols] @ q[rows].T.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < M
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    kl = tl.load(kl_ptr + cols, mask=col_ok, other=0)
    k_cols = k_ptr + cols.to(tl.int64)[:, None] * stride_k

    acc_g = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for m0 in range(0, N, BLOCK_M):
        rows = m0 + offs_m
        row_ok = rows < N
        t = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
        ql = tl.load(ql_ptr + rows, mask=row_ok, other=0)
        qs = tl.load(qs_ptr + rows, mask=row_ok, other=-1)
        T = tl.load(T_ptr + rows, mask=row_ok, other=0.0)
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
        pos = T > 0.0
        invT = tl.where(pos, 1.0 / tl.where(pos, T, 1.0), 0.0)
        g = tl.where(pos, g, 0.0)
        q_rows = q_ptr + rows.to(tl.int64)[None, :] * stride_q
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            if EVEN_N and EVEN_K:
                a = tl.load(k_cols + kk[None, :])
            else:
                a = tl.load(k_cols + kk[None, :], mask=col_ok[:, None] & (kk[None, :] < D), other=0.0)
            if EVEN_M and EVEN_K:
                b = tl.load(q_rows + kk[:, None])
            else:
                b = tl.load(q_rows + kk[:, None], mask=row_ok[None, :] & (kk[:, None] < D), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        valid = (kl[:, None] != ql[None, :]) & (cols[:, None] != qs[None, :])
        if not EVEN_M:
            valid = valid & row_ok[None, :]
        if not EVEN_N:
            valid = valid & col_ok[:, None]
        h = tl.where(valid, acc - t[None, :], 0.0)
        act = h > 0.0
        if P_MODE == 1:
            w = tl.where(act, g[None, :], 0.0)
        elif P_MODE == 2:
            w = tl.where(act, h * (g * invT)[None, :], 0.0)
        else:
            r = tl.where(act, h * invT[None, :], 1.0)
            w = tl.where(act, g[None, :] * tl.exp2(pm1 * tl.log2(r)), 0.0)
        # q[rows, dchunk]  (BLOCK_M, BLOCK_D)
        qv_ptrs = q_ptr + rows.to(tl.int64)[:, None] * stride_q + dd[None, :]
        if EVEN_M and EVEN_D:
            qv = tl.load(qv_ptrs)
        else:
            qv = tl.load(qv_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        acc_g = tl.dot(w.to(qv.dtype), qv, acc_g, input_precision=INPUT_PRECISION)
    gk_ptrs = gk_ptr + cols.to(tl.int64)[:, None] * stride_gk + dd[None, :]
    tl.store(gk_ptrs, acc_g.to(gk_ptr.dtype.element_ty), mask=col_ok[:, None] & d_ok[None, :])


_JITTED = {}


def _kernels():
    if not TRITON_AVAILABLE:
        raise RuntimeError("hinge_norm_rows_triton needs triton; install it or use impl='chunked'")
    mode = is_interpreting()
    ks = _JITTED.get(mode)
    if ks is None:
        ks = (triton.jit(_hinge_norm_fwd_kernel),
              triton.jit(_hinge_norm_bwd_rows_kernel),
              triton.jit(_hinge_norm_bwd_cols_kernel))
        _JITTED[mode] = ks
    return ks


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _fwd_config(dtype: torch.dtype, interpret: bool, p_mode: int) -> dict:
    # register use checked by compiling for sm_90 (triton 3.8): these have no spills
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3)
    if p_mode == 0:  # exp2/log2 temporaries: 128x128 spills, 128x64 uses 128 registers
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)


def _bwd_config(dtype: torch.dtype, D: int, interpret: bool) -> dict:
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_D=16, num_warps=4, num_stages=1)
    # accumulator BLOCK x BLOCK_D fp32 in registers; the score tile is recomputed once per
    # D chunk, so BLOCK_D as large as registers allow
    bd = max(16, min(256, _next_pow2(D)))
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, BLOCK_D=min(bd, 64), num_warps=8, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, BLOCK_D=bd, num_warps=8, num_stages=3)


def _p_mode(p: float) -> int:
    return 1 if p == 1.0 else (2 if p == 2.0 else 0)


def _prep(q, keys, t, q_labels, k_labels, q_self):
    dtype = torch.promote_types(q.dtype, keys.dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"hinge_norm_rows_triton supports fp32/fp16/bf16, got {dtype}")
    dev = q.device
    return (q.to(dtype).contiguous(), keys.to(dtype).contiguous(),
            t.to(device=dev, dtype=torch.float32).contiguous(),
            q_labels.to(device=dev, dtype=torch.int64).contiguous(),
            k_labels.to(device=dev, dtype=torch.int64).contiguous(),
            q_self.to(device=dev, dtype=torch.int64).contiguous(), dtype)


def _forward(q, keys, t, ql, kl, qs, p, precision, config=None):
    N, D = q.shape
    M = keys.shape[0]
    out = torch.zeros((N,), device=q.device, dtype=torch.float32)
    if N == 0 or M == 0 or D == 0:
        # D == 0: every score is 0, h = max(0, -t)
        if N and M and D == 0:
            return _dense_small(q, keys, t, ql, kl, qs, p)
        return out
    cfg = dict(_fwd_config(q.dtype, is_interpreting(), _p_mode(p)))
    if config:
        cfg.update({k: v for k, v in config.items() if k in cfg})
    BM, BN, BK = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    fwd, _, _ = _kernels()
    fwd[(triton.cdiv(N, BM),)](
        q, keys, t, ql, kl, qs, out,
        N, M, D, q.stride(0), keys.stride(0),
        float(p), 1.0 / float(p),
        P_MODE=_p_mode(p),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
        EVEN_M=(N % BM == 0), EVEN_N=(M % BN == 0), EVEN_K=(D % BK == 0),
        INPUT_PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def _dense_small(q, keys, t, ql, kl, qs, p):
    # degenerate D == 0 only (scores are all 0): plain torch
    N, M = q.shape[0], keys.shape[0]
    valid = (ql[:, None] != kl[None, :]) & (torch.arange(M, device=q.device)[None, :] != qs[:, None])
    h = torch.where(valid, (-t)[:, None].clamp_min(0).expand(N, M), torch.zeros((), device=q.device))
    m = h.amax(dim=1, keepdim=True)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    return torch.where(m[:, 0] > 0, m[:, 0] * ((h / safe) ** p).sum(1) ** (1.0 / p), torch.zeros_like(m[:, 0]))


class HingeNormRowsTriton(torch.autograd.Function):
    """T = (sum_j h_ij^p)^(1/p) per row; see the module docstring.

    forward(q, keys, t, q_labels, k_labels, q_self, p, fp32_precision="ieee", config=None)
    """

    @staticmethod
    def forward(ctx, q, keys, t, q_labels, k_labels, q_self, p, fp32_precision="ieee", config=None):
        p = float(p)
        if not (p >= 1.0) or math.isinf(p):
            raise ValueError(f"p must be a finite number >= 1, got {p}")
        qc, kc, tc, ql, kl, qs, dtype = _prep(q, keys, t, q_labels, k_labels, q_self)
        precision = _check_precision(fp32_precision) if dtype == torch.float32 else "ieee"
        T = _forward(qc, kc, tc, ql, kl, qs, p, precision, config)
        ctx.save_for_backward(qc, kc, tc, ql, kl, qs, T)
        ctx.p = p
        ctx.precision = precision
        ctx.config = config
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
        g = g.to(torch.float32).contiguous()
        grad_q = torch.zeros((N, D), device=qc.device, dtype=qc.dtype) if need_q else None
        grad_k = torch.zeros((M, D), device=kc.device, dtype=kc.dtype) if need_k else None
        grad_t = torch.zeros((N,), device=qc.device, dtype=torch.float32) if need_t else None
        if N and M and D and (need_q or need_k or need_t):
            cfg = dict(_bwd_config(qc.dtype, D, is_interpreting()))
            if ctx.config:
                cfg.update({k: v for k, v in ctx.config.get("bwd", {}).items() if k in cfg})
            BM, BN, BK, BD = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["BLOCK_D"]
            common = dict(
                P_MODE=_p_mode(ctx.p), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, BLOCK_D=BD,
                EVEN_M=(N % BM == 0), EVEN_N=(M % BN == 0), EVEN_K=(D % BK == 0),
                EVEN_D=(D % BD == 0), INPUT_PRECISION=ctx.precision,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )
            _, bwd_rows, bwd_cols = _kernels()
            pm1 = ctx.p - 1.0
            if need_q or need_t:
                gq = grad_q if need_q else torch.empty((N, BD), device=qc.device, dtype=qc.dtype)
                gt = grad_t if need_t else torch.empty((N,), device=qc.device, dtype=torch.float32)
                n_d = triton.cdiv(D, BD) if need_q else 1
                bwd_rows[(triton.cdiv(N, BM), n_d)](
                    qc, kc, tc, ql, kl, qs, T, g, gq, gt,
                    N, M, D, qc.stride(0), kc.stride(0), gq.stride(0), pm1, **common)
            if need_k:
                bwd_cols[(triton.cdiv(M, BN), triton.cdiv(D, BD))](
                    qc, kc, tc, ql, kl, qs, T, g, grad_k,
                    N, M, D, qc.stride(0), kc.stride(0), grad_k.stride(0), pm1, **common)
        if grad_q is not None:
            grad_q = grad_q.to(q_dtype)
        if grad_k is not None:
            grad_k = grad_k.to(k_dtype)
        if grad_t is not None:
            grad_t = grad_t.to(t_dtype)
        return grad_q, grad_k, grad_t, None, None, None, None, None, None


def hinge_norm_rows_triton(
    q: torch.Tensor,
    keys: torch.Tensor,
    t: torch.Tensor,
    q_labels: torch.Tensor,
    k_labels: torch.Tensor,
    q_self: torch.Tensor,
    p: float,
    *,
    fp32_precision: str = "ieee",
    config: Optional[dict] = None,
) -> torch.Tensor:
    """Per-row ``(sum_j h_ij^p)^(1/p)`` with ``h_ij = [q_i . k_j - t_i]_+`` over valid pairs.

    Args:
        q: (N, D) queries; keys: (M, D); fp32 / fp16 / bf16 (promoted to a common dtype).
        t: (N,) thresholds (fp32; differentiable).
        q_labels: (N,), k_labels: (M,) integer labels; pairs with equal labels are excluded.
        q_self: (N,) int64, a key index excluded for each row, or -1 for none.
        p: finite float >= 1 (1: sum of hinges).
        fp32_precision: tl.dot mode for fp32 inputs ("ieee" default, "tf32x3", "tf32").
        config: tile overrides (keys BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages for the
            forward; a nested dict under "bwd" for the backward, which also takes BLOCK_D).

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
    return HingeNormRowsTriton.apply(q, keys, t, q_labels, k_labels, q_self, p, fp32_precision, config)
