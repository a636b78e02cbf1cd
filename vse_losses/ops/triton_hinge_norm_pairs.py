"""Both directions' ℓp hinge norms of the diagonal pairs, with one backward for both (Triton + cuBLAS).

For the common case where positive pair j is ``(j, j)`` (x and y both B×D, P = B), threshold
``t_j``, and (i, n) a negative iff ``labels[i] != ref_labels[n]`` (and ``i != n`` with ``self_ref``):

    T¹_j = (Σ_n [x_j·y_n − t_j]_+^p)^{1/p}     (i2t, row j of S = x yᵀ)
    T²_j = (Σ_n [x_n·y_j − t_j]_+^p)^{1/p}     (t2i, column j of S)

Forward: one pass over the score tiles for both directions (``_pairs_fwd_kernel``: rows complete
their running ℓp statistics within a program, columns merge theirs into per-program partials,
as the hardest-negative kernel does; the partials are combined in torch). Backward: with
``W = ∂(g¹·T¹ + g²·T²)/∂S`` (both directions' weights in one matrix),

    ∂x = W y,   ∂y = Wᵀ x,   ∂t_j = −Σ_n W¹_jn − Σ_n W²_nj,

computed in row chunks of W: a Triton kernel recomputes the score tiles and writes the chunk of
weights with its i2t row sums and t2i column sums, cuBLAS multiplies it twice (the chunk's rows
of ∂x; its contribution to ∂y, accumulated in float32). One recomputed product and two cuBLAS
products serve both directions. Nothing B×B is alive; the chunk holds ``W_CHUNK_ELEMENTS``
weights, and the ∂y accumulator is B×D float32.
"""

from __future__ import annotations

import torch

from .lp_norm import lp_finish, lp_merge
from .tiling import diagonal_pairs
from .triton_common import (  # triton, tl: None without triton
    choose_groups,
    device_arch,
    even_shape,
    for_arch,
    jitted,
    lp_merge_tile,
    num_sms,
    score_tile,
    tl,
    triton,
)
from .triton_hinge_norm import (
    _forward,
    _grad_scale,
    _p_mode,
    _prep,
    _weighted_products,
    hinge_norm_rows_triton,
    is_interpreting,
)


def _pairs_fwd_kernel(
    x_ptr,
    y_ptr,
    t_ptr,
    xl_ptr,
    yl_ptr,
    rm_ptr,
    rs_ptr,  # (Q, B) row partials: running max of h, Σ (h / max)^p
    cm_ptr,
    cs_ptr,  # (P, B) column partials, pre-filled with 0
    B,
    D,
    stride_x,
    stride_y,
    RB_PER,
    CT_PER,
    p,
    SELF_REF: tl.constexpr,
    P_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Both directions' hinge ℓp statistics of the paired batch from one pass over the score tiles.

    Program (pid_p, pid_q) owns RB_PER row blocks × CT_PER column tiles (as the hardest-negative
    kernel). h_ij = [s_ij − t_i]_+ (rows, i2t) and [s_ij − t_j]_+ (columns, t2i) over the
    negatives (labels differ; i ≠ j with SELF_REF). Rows: a running (max, Σ (h/max)^p) over the
    program's column tiles, stored in row partial pid_q. Columns: merged into column partial pid_p,
    which only this program reads and writes. P_MODE 1 (p = 1) keeps Σ h only (max unused).
    """
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    nrb = tl.cdiv(B, BLOCK_M)
    nct = tl.cdiv(B, BLOCK_N)
    rb_end = tl.minimum(pid_p * RB_PER + RB_PER, nrb)
    ct_end = tl.minimum(pid_q * CT_PER + CT_PER, nct)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for rb in range(pid_p * RB_PER, rb_end):
        rows = rb * BLOCK_M + offs_m
        row_ok = rows < B
        xl = tl.load(xl_ptr + rows, mask=row_ok, other=0)
        t_r = tl.load(t_ptr + rows, mask=row_ok, other=0.0)
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        run_m = tl.zeros([BLOCK_M], dtype=tl.float32)
        run_s = tl.zeros([BLOCK_M], dtype=tl.float32)
        for ct in range(pid_q * CT_PER, ct_end):
            cols = ct * BLOCK_N + offs_n
            col_ok = cols < B
            y_cols = y_ptr + cols.to(tl.int64)[None, :] * stride_y
            acc = score_tile(x_rows, y_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
            yl = tl.load(yl_ptr + cols, mask=col_ok, other=0)
            t_c = tl.load(t_ptr + cols, mask=col_ok, other=0.0)
            valid = (xl[:, None] != yl[None, :]) & row_ok[:, None] & col_ok[None, :]
            if SELF_REF:
                valid = valid & (rows[:, None] != cols[None, :])
            h = tl.where(valid, tl.maximum(acc - t_r[:, None], 0.0), 0.0)
            hc = tl.where(valid, tl.maximum(acc - t_c[None, :], 0.0), 0.0)
            c_ptr = pid_p * B + cols
            tl.debug_barrier()  # the previous row block's stores to the column partial are visible
            old_s = tl.load(cs_ptr + c_ptr, mask=col_ok, other=0.0)
            # rows: the running statistics in registers; columns: merged into the stored partial
            if P_MODE == 1:  # sums alone, no maxima
                run_m, run_s = lp_merge_tile(run_m, run_s, h, p, P_MODE, 1)
                tl.store(cs_ptr + c_ptr, old_s + tl.sum(hc, axis=0), mask=col_ok)
            else:
                old_m = tl.load(cm_ptr + c_ptr, mask=col_ok, other=0.0)
                run_m, run_s = lp_merge_tile(run_m, run_s, h, p, P_MODE, 1)
                c_m, c_s = lp_merge_tile(old_m, old_s, hc, p, P_MODE, 0)
                tl.store(cm_ptr + c_ptr, c_m, mask=col_ok)
                tl.store(cs_ptr + c_ptr, c_s, mask=col_ok)
        r_ptr = pid_q * B + rows
        tl.store(rm_ptr + r_ptr, run_m, mask=row_ok)
        tl.store(rs_ptr + r_ptr, run_s, mask=row_ok)


def _pairs_config(dtype: torch.dtype, interpret: bool, p_mode: int, even: bool = True, arch: int = 90) -> dict:
    """:func:`_pairs_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_pairs_tiles(dtype, interpret, p_mode, even), arch, dtype, narrow=True)


def _pairs_tiles(dtype: torch.dtype, interpret: bool, p_mode: int, even: bool = True) -> dict:
    """Tiles of the one-pass forward (no spills on sm_90 in any variant, as triton specializes
    it at run time: test_triton_compile.py, triton 3.6 and 3.8)."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=8 if even else 4, num_stages=3)
    if even and p_mode == 1:
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    if even and p_mode == 2:
        return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)
    # two running statistics (rows and columns) per tile, the exp2/log2 of a general p or
    # unaligned masked loads: 64x64 keeps them in registers
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


def _merge(m: torch.Tensor, s: torch.Tensor, p: float) -> torch.Tensor:
    """(G, B) partial (max, Σ (h/max)^p) → the ℓp norm over all partials; p = 1: Σ of the sums."""
    return lp_finish(*lp_merge(m, s, p), p)


def _pairs_forward(x, y, t, lx, ly, self_ref, p):
    """(T¹, T²) of the paired batch from one pass over the score tiles (x, y contiguous, one dtype)."""
    B, D = x.shape
    cfg = _pairs_config(x.dtype, is_interpreting(), _p_mode(p), even_shape(B, B, D), device_arch(x.device))
    BM, BN, BK = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    nrb, nct = triton.cdiv(B, BM), triton.cdiv(B, BN)
    P, Q = choose_groups(nrb, nct, B, B, num_sms(x.device), max_partial_bytes=128 * 2**20)
    rb_per, ct_per = triton.cdiv(nrb, P), triton.cdiv(nct, Q)
    P, Q = triton.cdiv(nrb, rb_per), triton.cdiv(nct, ct_per)  # no empty programs
    f32 = dict(device=x.device, dtype=torch.float32)
    rm, rs = torch.empty((Q, B), **f32), torch.empty((Q, B), **f32)
    cm, cs = torch.zeros((P, B), **f32), torch.zeros((P, B), **f32)
    jitted(_pairs_fwd_kernel)[(P, Q)](
        x,
        y,
        t,
        lx,
        ly,
        rm,
        rs,
        cm,
        cs,
        B,
        D,
        x.stride(0),
        y.stride(0),
        rb_per,
        ct_per,
        float(p),
        SELF_REF=bool(self_ref),
        P_MODE=_p_mode(p),
        BLOCK_M=BM,
        BLOCK_N=BN,
        BLOCK_K=BK,
        EVEN_M=(B % BM == 0),
        EVEN_N=(B % BN == 0),
        EVEN_K=(D % BK == 0),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return _merge(rm, rs, p), _merge(cm, cs, p)


class HingeNormPairsTriton(torch.autograd.Function):
    """forward(x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i) → (T¹, T²), each (B,) fp32."""

    @staticmethod
    def forward(ctx, x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i):
        B = x.shape[0]
        own = torch.arange(B, device=x.device) if self_ref else torch.full((B,), -1, device=x.device)
        xc, yc, tc, lx, ly, own = _prep(x, y, t, labels, ref_labels, own)
        zeros = torch.zeros(B, device=x.device, dtype=torch.float32)
        if B and xc.shape[1]:
            T1, T2 = _pairs_forward(xc, yc, tc, lx, ly, self_ref, p)
        else:  # no pair, or D = 0 (no score to take), which the per-direction forward handles
            T1, T2 = _forward(xc, yc, tc, lx, ly, own, p), _forward(yc, xc, tc, ly, lx, own, p)
        T1 = T1 if do_i2t else zeros
        T2 = T2 if do_t2i else zeros
        ctx.save_for_backward(xc, yc, tc, lx, ly, own, T1, T2)
        ctx.self_ref, ctx.p = self_ref, p
        ctx.do = (do_i2t, do_t2i)
        ctx.dtypes = (x.dtype, y.dtype, t.dtype)
        return T1, T2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        xc, yc, tc, lx, ly, own, T1, T2 = ctx.saved_tensors
        B, D = xc.shape
        p = ctx.p
        g1 = g1 if ctx.do[0] and g1 is not None else None
        g2 = g2 if ctx.do[1] and g2 is not None else None
        f32 = dict(device=xc.device, dtype=torch.float32)
        gx, gy, gt = torch.zeros((B, D), **f32), torch.zeros((B, D), **f32), torch.zeros((B,), **f32)
        scale = _grad_scale(g1, g2)
        if B and D and scale is not None:
            # ∂x = W y, ∂y = Wᵀ x, ∂t = −(i2t row sums + t2i column sums), W scaled by 1/scale
            i2t = None if g1 is None else (tc, T1, (g1.to(torch.float32) / scale).contiguous())
            t2i = None if g2 is None else (tc, T2, (g2.to(torch.float32) / scale).contiguous())
            gx, gy, rows, cols = _weighted_products(xc, yc, i2t, t2i, lx, ly, own if ctx.self_ref else None, p)
            for part in (rows, cols):
                if part is not None:
                    gt -= part
            gx.mul_(scale)
            gy.mul_(scale)
            gt.mul_(scale)
        x_dtype, y_dtype, t_dtype = ctx.dtypes
        return gx.to(x_dtype), gy.to(y_dtype), gt.to(t_dtype), None, None, None, None, None, None


def hinge_norm_pairs_triton(
    x,
    y,
    t,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    p: float,
    do_i2t: bool = True,
    do_t2i: bool = True,
    paired: bool = False,
):
    """See :func:`vse_losses.ops.hinge_norm_pairs`: the diagonal pairs (j, j) in one pass for both
    directions (this file), any other pairs by :func:`hinge_norm_rows_triton` once per direction."""
    if diagonal_pairs(a, p_idx, x.shape[0], y.shape[0], paired):
        return hinge_norm_diagonal_pairs_triton(x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i)
    none = torch.full_like(a, -1)
    T1 = T2 = torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32))
    if do_i2t:
        T1 = hinge_norm_rows_triton(x[a], y, t, labels[a], ref_labels, a if self_ref else none, p)
    if do_t2i:
        T2 = hinge_norm_rows_triton(y[p_idx], x, t, ref_labels[p_idx], labels, p_idx if self_ref else none, p)
    return T1, T2


def hinge_norm_diagonal_pairs_triton(
    x, y, t, labels, ref_labels, self_ref: bool, p: float, do_i2t: bool = True, do_t2i: bool = True
):
    """``(T¹, T²)`` of the diagonal pairs; see the module docstring. x, y (B, D); t, labels, ref_labels (B,)."""
    p = float(p)
    if not (p >= 1.0) or p == float("inf"):
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return HingeNormPairsTriton.apply(x, y, t, labels, ref_labels, bool(self_ref), p, bool(do_i2t), bool(do_t2i))
