"""Both directions' smoothed maxima of every positive pair, the score tile fused with an online
log-sum-exp (Triton + cuBLAS): ``lse_pairs`` of the temperature losses.

For a positive pair ``(a_j, p_j)`` with threshold ``t_j = S[a_j, p_j] − α_j`` (α: the margin)
and temperature τ (as in :mod:`~vse_losses.ops.chunked_lse_pairs`):

    i2t:  L¹_j = log(1 + Σ_n exp((S[a_j, n] − t_j)/τ))   over the negatives n of row a_j,
    t2i:  L²_j = log(1 + Σ_n exp((S[n, p_j] − t_j)/τ))   over the negatives n of column p_j.

The threshold is constant along each sum, so the terms factor through one statistic per row and
one per column of ``S = x yᵀ``:

    R_i = log Σ_n exp(S[i, n]/τ)   (negatives n of row i),    C_k = log Σ_n exp(S[n, k]/τ),
    L¹_j = softplus(R_{a_j} − t_j/τ),    L²_j = softplus(C_{p_j} − t_j/τ),

with R = −∞ (L = 0) for a row without negatives. Whatever the labels, the kernel computes (B,)
and (M,) statistics; the pairs (any number per row or column) only index them, in O(P) torch.

Forward (``_lse_fwd_kernel``): one pass over the score tiles, in base 2 (``z = S·log2(e)/τ``,
exp2 being the hardware's instruction), float32 whatever the input dtype. Program (pid_p, pid_q)
owns RB_PER row blocks × CT_PER column tiles: a row keeps a running ``(m, s = Σ 2^(z − m))`` in
registers over the program's tiles and stores it as row partial pid_q; a column merges each tile
into column partial pid_p, which only this program touches. The partials (one per column group
for a row, one per row group for a column) are combined in torch. One direction alone is the
rows of its own problem (t2i: x and y swapped), so the kernel has no column work then.

Backward: with ``σ¹_j = sigmoid(R_{a_j} − t_j/τ)`` (= Σ_n of pair j's softmax weights),
``c¹_j = g¹_j σ¹_j/τ`` (c² likewise) and the per-row and per-column sums ``G_i = Σ_{j: a_j = i}
c¹_j``, ``G'_k = Σ_{j: p_j = k} c²_j``, the score gradient of a negative (i, n) is

    W_in = G_i exp(S_in/τ − R_i) + G'_n exp(S_in/τ − C_n),
    ∂x = W y,   ∂y = Wᵀ x,   ∂t_j = −c¹_j − c²_j,   ∂τ = −(Σ W ⊙ S + Σ_j ∂t_j t_j)/τ,

where ``Σ W ⊙ S = Σ_i x_i · ∂x_i`` comes with ∂x (the τ gradient needs no pass of its own); ∂t
reaches x and y through the pairs' scores, added to the float32 rows of each chunk before they
are written (:class:`~vse_losses.ops.tiling.PairScores`: no gradient-sized buffer of its own),
and ``∂α = −∂t``.
A Triton kernel (``_lse_weight_kernel``) recomputes the score tiles of a chunk of rows and writes
their weights (in the operand dtype, scaled by max |G| so that half precision keeps them);
cuBLAS multiplies each chunk: its rows of ∂x (complete, written in x's dtype), and its share of
∂y, accumulated in float32. Where that M×D float32 accumulator would be extra memory beyond
``ACC_BYTES`` (16-bit y), ∂y takes a second pass over chunks of columns instead (the same kernel
on the transposed problem, one more recomputed product, no accumulator). Nothing B×M is alive;
a chunk holds ``W_CHUNK_ELEMENTS`` weights.

Cosine (``cosine=True``, the losses' default): the scores are ``S_in = c_i c_n x_i·y_n`` with
``c = 1/max(‖·‖, ε)`` as F.normalize, the scales multiplied into each score tile in float32
(SCALED, as :mod:`~vse_losses.ops.triton_negative_max`); no normalised copy of x or y is made.
The weight kernel writes ``W̃ = c_x W c_y`` instead of W (the normalisation of the chunks then
divides by max c_x · max c_y too), and the products lose the normalisation's share:

    ∂x_i = (W̃ y)_i − c_i² A_i x_i,   A_i = x_i·(W̃ y)_i = Σ_n W_in S_in,
    ∂y_n = (W̃ᵀ x)_n − c_n² A'_n y_n,   A'_n = y_n·(W̃ᵀ x)_n,

each row's A from its own row of the product (O(chunk·D)); the τ gradient's ``Σ W ⊙ S`` is
``Σ_i A_i`` (``Σ_i x_i·∂x_i`` is 0 here: the gradient of a normalised row is orthogonal to it).
The pairs' scores in the thresholds are cosines too, their gradient with its own radial part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .tiling import Matmul, PairScores, cosine_scale_pair, radial_coefficients, remove_radial_
from .triton_common import (  # triton, tl: None without triton
    choose_groups,
    chunk_grid,
    chunk_score_tile,
    device_arch,
    even_shape,
    for_arch,
    is_interpreting,
    jitted,
    kernel_helper,
    num_sms,
    pair_operands,
    score_tile,
    store_chunk,
    tile_args,
    tl,
    triton,
)
from .triton_row_dots import row_dots_forward_triton

__all__ = ["LsePairsTriton", "lse_pairs_triton"]

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
# Elements of one chunk of backward weights (rows × M, in the operand dtype: 128 MiB in bf16).
W_CHUNK_ELEMENTS = 1 << 26
# The largest float32 ∂y accumulator (M×D) of the one-pass backward for 16-bit inputs; above it
# ∂y is computed by a second pass over column chunks (float32 inputs: the accumulator is ∂y itself).
ACC_BYTES = 128 * 2**20


# ----------------------------------------------------------------------------------------
# Kernels (plain functions; jitted lazily by ``jitted()``)
# ----------------------------------------------------------------------------------------
@kernel_helper
def lse_merge_tile(m, s, z, AXIS: tl.constexpr):
    """Running base-2 log-sum-exp statistics ``(m, s)`` (m the largest z so far, ``s = Σ 2^(z − m)``;
    nothing yet: ``(−∞, 0)``) with a tile of z (−∞ where not a negative) merged in along AXIS
    (1: per row, 0: per column). → ``(m', s')``."""
    new_m = tl.maximum(m, tl.max(z, axis=AXIS))
    base = tl.where(new_m == float("-inf"), 0.0, new_m)  # no −∞ − (−∞) while nothing is merged
    new_s = s * tl.exp2(m - base) + tl.sum(tl.exp2(z - tl.expand_dims(base, AXIS)), axis=AXIS)
    return new_m, new_s


def _lse_fwd_kernel(
    x_ptr,
    y_ptr,
    xl_ptr,
    yl_ptr,
    rx_ptr,
    ry_ptr,  # rx, ry: row / column scales (SCALED)
    rm_ptr,
    rs_ptr,  # (Q, B) row partials: running max of z, Σ 2^(z − max)
    cm_ptr,
    cs_ptr,  # (P, M) column partials, pre-filled with (−∞, 0)
    B,
    M,
    D,
    stride_x,
    stride_y,
    RB_PER,
    CT_PER,
    z_scale,  # log2(e)/τ
    LABELS: tl.constexpr,
    COLS: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """The base-2 log-sum-exp statistics of ``z = S·z_scale`` over the negatives of every row (and,
    with COLS, every column), from one pass over the score tiles; with SCALED the scores are
    ``rx_i ry_n x_i·y_n`` (the cosine: rx, ry = 1/‖row‖). (i, n) is a negative iff
    ``xl_i != yl_n``; without LABELS (the paired batch, labels arange) iff i ≠ n. One modality
    (self_ref) needs nothing more: its labels are the same on both sides, so (i, i) is never a
    negative."""
    pid_p = tl.program_id(0)
    pid_q = tl.program_id(1)
    nrb = tl.cdiv(B, BLOCK_M)
    nct = tl.cdiv(M, BLOCK_N)
    rb_end = tl.minimum(pid_p * RB_PER + RB_PER, nrb)
    ct_end = tl.minimum(pid_q * CT_PER + CT_PER, nct)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for rb in range(pid_p * RB_PER, rb_end):
        rows = rb * BLOCK_M + offs_m
        row_ok = rows < B
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        if LABELS:
            xl = tl.load(xl_ptr + rows, mask=row_ok, other=0)
        if SCALED:  # z_scale folded into the row scales: one multiply per entry for each
            zr = tl.load(rx_ptr + rows, mask=row_ok, other=1.0) * z_scale
        run_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        run_s = tl.zeros([BLOCK_M], dtype=tl.float32)
        for ct in range(pid_q * CT_PER, ct_end):
            cols = ct * BLOCK_N + offs_n
            col_ok = cols < M
            y_cols = y_ptr + cols.to(tl.int64)[None, :] * stride_y
            acc = score_tile(x_rows, y_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
            if LABELS:
                yl = tl.load(yl_ptr + cols, mask=col_ok, other=0)
                valid = xl[:, None] != yl[None, :]
            else:
                valid = rows[:, None] != cols[None, :]
            if not EVEN_M:
                valid = valid & row_ok[:, None]
            if not EVEN_N:
                valid = valid & col_ok[None, :]
            if SCALED:
                ry = tl.load(ry_ptr + cols, mask=col_ok, other=1.0)
                z = tl.where(valid, (acc * zr[:, None]) * ry[None, :], float("-inf"))
            else:
                z = tl.where(valid, acc * z_scale, float("-inf"))
            run_m, run_s = lse_merge_tile(run_m, run_s, z, 1)
            if COLS:
                c_ptr = pid_p * M + cols
                tl.debug_barrier()  # the previous row block's stores to the column partial are visible
                old_m = tl.load(cm_ptr + c_ptr, mask=col_ok, other=float("-inf"))
                old_s = tl.load(cs_ptr + c_ptr, mask=col_ok, other=0.0)
                c_m, c_s = lse_merge_tile(old_m, old_s, z, 0)
                tl.store(cm_ptr + c_ptr, c_m, mask=col_ok)
                tl.store(cs_ptr + c_ptr, c_s, mask=col_ok)
        r_ptr = pid_q * B + rows
        tl.store(rm_ptr + r_ptr, run_m, mask=row_ok)
        tl.store(rs_ptr + r_ptr, run_s, mask=row_ok)


def _lse_weight_kernel(
    q_ptr,
    k_ptr,
    w_ptr,
    lq_ptr,
    lk_ptr,
    rq_ptr,
    gq_ptr,
    rk_ptr,
    gk_ptr,
    cq_ptr,
    ck_ptr,  # cq, ck: scales of q's rows and of the keys (SCALED)
    r0,
    R,
    M,
    D,
    stride_q,
    stride_k,
    stride_w,
    z_scale,  # log2(e)/τ
    LABELS: tl.constexpr,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    SCALED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of the weights of the rows r0 .. r0 + R of q against all keys:

        W[i − r0, n] = [ROW_TERM] gq_i 2^(z_in − rq_i) + [COL_TERM] gk_n 2^(z_in − rk_n)

    on the negatives (i, n) (as in the forward kernel), 0 elsewhere; ``z = S·z_scale`` and rq, rk
    the base-2 statistics (finite: a row without negatives has none of its entries here). SCALED:
    the scores are ``cq_i ck_n q_i·k_n`` and the tile written is ``cq_i W[i − r0, n] ck_n`` (W̃)."""
    _, _, loc, rows, row_ok, cols, col_ok, acc = chunk_score_tile(
        q_ptr, k_ptr, r0, R, M, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K
    )
    if LABELS:
        lq = tl.load(lq_ptr + rows, mask=row_ok, other=0)
        lk = tl.load(lk_ptr + cols, mask=col_ok, other=0)
        valid = lq[:, None] != lk[None, :]
    else:
        valid = rows[:, None] != cols[None, :]
    valid = valid & row_ok[:, None] & col_ok[None, :]
    if SCALED:  # the scales as row and column vectors: no tile of them held beside w
        cq = tl.load(cq_ptr + rows, mask=row_ok, other=1.0)
        ck = tl.load(ck_ptr + cols, mask=col_ok, other=1.0)
        z = tl.where(valid, (acc * (cq * z_scale)[:, None]) * ck[None, :], float("-inf"))
    else:
        z = tl.where(valid, acc * z_scale, float("-inf"))  # 2^(−∞ − finite) = 0 off the negatives
    w = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ROW_TERM:
        rq = tl.load(rq_ptr + rows, mask=row_ok, other=0.0)
        gq = tl.load(gq_ptr + rows, mask=row_ok, other=0.0)
        w += gq[:, None] * tl.exp2(z - rq[:, None])
    if COL_TERM:
        rk = tl.load(rk_ptr + cols, mask=col_ok, other=0.0)
        gk = tl.load(gk_ptr + cols, mask=col_ok, other=0.0)
        w += gk[None, :] * tl.exp2(z - rk[None, :])
    if SCALED:
        w = (w * cq[:, None]) * ck[None, :]
    store_chunk(w_ptr, w, loc, cols, row_ok, col_ok, stride_w)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def _fwd_config(dtype: torch.dtype, interpret: bool, even: bool, cols: bool, arch: int = 90) -> dict:
    """:func:`_fwd_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_fwd_tiles(dtype, interpret, even, cols), arch, dtype, narrow=True)


def _fwd_tiles(dtype: torch.dtype, interpret: bool, even: bool, cols: bool) -> dict:
    """Tiles of the forward kernel (no spills on sm_90 in any variant: test_triton_compile.py).
    ``even``: B and M multiples of 128 and D of 64; ``cols``: the column statistics too."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
    if even:
        return dict(BLOCK_M=128, BLOCK_N=64 if cols else 128, BLOCK_K=64, num_warps=8, num_stages=3)
    # the unaligned, masked loads of ragged shapes beside the two exponentials of every entry
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


def _weight_config(dtype: torch.dtype, interpret: bool, even: bool = True, arch: int = 90) -> dict:
    """:func:`_weight_tiles` for the GPU architecture ``arch`` (:func:`for_arch`)."""
    return for_arch(_weight_tiles(dtype, interpret, even), arch, dtype, narrow=True)


def _weight_tiles(dtype: torch.dtype, interpret: bool, even: bool = True) -> dict:
    """Tiles of the backward's weight kernel (no spills on sm_90). BLOCK_M, the multiple of the
    chunk rows, depends on the dtype alone."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
def _finish(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(G, N) base-2 partials ``(m, s)`` → the base-2 log-sum-exp over all of them (N,); −∞ where
    no partial saw a negative."""
    top = m.amax(0)
    base = torch.where(top == float("-inf"), torch.zeros_like(top), top)
    return top + torch.log2((s * torch.exp2(m - base)).sum(0))


def _statistics(q, k, lq, lk, labels, z_scale, cols, _groups=None, *, scales=None, config: dict | None = None):
    """Base-2 log-sum-exp statistics of ``q kᵀ·z_scale`` over the negatives: per row of q (N,) and,
    with ``cols``, per row of k (M,), else None. ``scales``: ``(c_q (N,), c_k (M,))`` float32, the
    scores ``c_i c_n q_i·k_n``, or None. ``_groups``: the (P, Q) program grid (tests); ``config``:
    tile overrides (gpu_check's tile sweep)."""
    N, D = q.shape
    M = k.shape[0]
    cfg = dict(
        _fwd_config(q.dtype, is_interpreting(), even_shape(N, M, D), cols, device_arch(q.device)), **(config or {})
    )
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    nrb, nct = triton.cdiv(N, BM), triton.cdiv(M, BN)
    P, Q = _groups or choose_groups(nrb, nct, N, M if cols else 0, num_sms(q.device), max_partial_bytes=128 * 2**20)
    rb_per, ct_per = triton.cdiv(nrb, P), triton.cdiv(nct, Q)
    P, Q = triton.cdiv(nrb, rb_per), triton.cdiv(nct, ct_per)  # no empty programs
    f32 = dict(device=q.device, dtype=torch.float32)
    rm, rs = torch.empty((Q, N), **f32), torch.empty((Q, N), **f32)
    cm = torch.full((P, M) if cols else (1, 1), float("-inf"), **f32)
    cs = torch.zeros((P, M) if cols else (1, 1), **f32)
    rx, ry = scales or (rm, rm)  # rm: never read (SCALED is False)
    jitted(_lse_fwd_kernel)[(P, Q)](
        q,
        k,
        lq,
        lk,
        rx,
        ry,
        rm,
        rs,
        cm,
        cs,
        N,
        M,
        D,
        q.stride(0),
        k.stride(0),
        rb_per,
        ct_per,
        float(z_scale),
        LABELS=labels,
        COLS=cols,
        SCALED=scales is not None,
        **tile_args(cfg, N, M, D),
    )
    return _finish(rm, rs), (_finish(cm, cs) if cols else None)


def _weight_chunks(q, k, lq, lk, labels, z_scale, q_term, k_term, w_dtype, *, scales=None, config: dict | None = None):
    """``(r0, W)`` for chunks of rows of q: W (R, M) the weights of rows r0 .. r0 + R against every
    key (see ``_lse_weight_kernel``). q_term / k_term: ``(r, g)`` float32 over the rows of q / the
    keys (base-2 statistics with −∞ replaced by 0, weight sums), or None. ``scales``: ``(c_q,
    c_k)`` float32 (the cosine: W̃ is written), or None. ``config``: tile overrides but BLOCK_M
    (gpu_check's tile sweep)."""
    N, D = q.shape
    M = k.shape[0]
    arch = device_arch(q.device)
    BM = _weight_config(q.dtype, is_interpreting(), arch=arch)["BLOCK_M"]
    step = min(N, max(BM, (W_CHUNK_ELEMENTS // max(M, 1)) // BM * BM))
    unused = lq  # any tensor, for the pointers a constexpr branch never reads
    rq, gq = q_term or (unused, unused)
    rk, gk = k_term or (unused, unused)
    cq, ck = scales or (unused, unused)
    for r0 in range(0, N, step):
        R = min(step, N - r0)
        cfg = {**_weight_config(q.dtype, is_interpreting(), even_shape(R, M, D), arch), **(config or {}), "BLOCK_M": BM}
        W = torch.empty((R, M), device=q.device, dtype=w_dtype)
        jitted(_lse_weight_kernel)[chunk_grid(R, M, cfg)](
            q,
            k,
            W,
            lq,
            lk,
            rq,
            gq,
            rk,
            gk,
            cq,
            ck,
            r0,
            R,
            M,
            D,
            q.stride(0),
            k.stride(0),
            W.stride(0),
            float(z_scale),
            LABELS=labels,
            ROW_TERM=q_term is not None,
            COL_TERM=k_term is not None,
            SCALED=scales is not None,
            **tile_args(cfg, R, M, D),
        )
        yield r0, W


def _products(x, y, lx, ly, labels, z_scale, row_term, col_term, need_x, need_y, need_ws, scales=None, pairs=None):
    """``(∂x, ∂y, Σ W ⊙ S)`` of the weights W of the row term ``(R, G)`` over x's rows and the column
    term ``(C, G')`` over y's rows (either None); ∂x, ∂y in x's and y's dtypes (None where not
    asked for), Σ W ⊙ S a float32 scalar (with ``need_ws``). ``scales``: ``(c_x, c_y)`` float32,
    the cosine (the module docstring), or None. ``pairs``: ``(PairScores, ∂t)``, whose share is
    added to the float32 rows before they are written, or None."""
    B, D = x.shape
    M = y.shape[0]
    terms = [term for term in (row_term, col_term) if term is not None]
    scale = torch.stack([g.abs().max() for _, g in terms]).max()
    if scales is not None:  # |W̃_in| ≤ (|G_i| + |G'_n|) c_i c_n
        scale = scale * scales[0].max() * scales[1].max()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # W/scale is O(1): fp16 keeps it

    def prepared(term):
        if term is None:
            return None
        r, g = term
        return torch.where(r == float("-inf"), torch.zeros_like(r), r).contiguous(), (g / scale).contiguous()

    row_term, col_term = prepared(row_term), prepared(col_term)
    kx = ky = None  # the radial coefficients c² of the rows (module docstring)
    if scales is not None:
        kx, ky = radial_coefficients(scales[0]), radial_coefficients(scales[1])
    mm = Matmul(x.dtype, x.device)
    x_op, y_op = mm.operand(x), mm.operand(y)
    gx = torch.empty_like(x) if need_x else None
    ws = torch.zeros((), device=x.device, dtype=torch.float32)
    acc = None
    if need_y and (y.dtype == torch.float32 or M * D * 4 <= ACC_BYTES):
        acc = torch.zeros((M, D), device=y.device, dtype=torch.float32)  # one pass: ∂y accumulated
    if need_x or need_ws or acc is not None:
        chunks = _weight_chunks(x, y, lx, ly, labels, z_scale, row_term, col_term, mm.operand_dtype, scales=scales)
        for r0, W in chunks:
            r1 = r0 + W.shape[0]
            if need_x or need_ws:
                part = mm(W, y_op)  # (R, D) float32: rows r0..r1 of ∂x/scale (cosine: of W̃ y/scale)
                if kx is not None:
                    ws += remove_radial_(part, x[r0:r1], kx[r0:r1]).sum()  # Σ_i A_i = Σ W ⊙ S
                elif need_ws:
                    ws += (part * x[r0:r1]).sum()  # Σ_i x_i · ∂x_i = Σ W ⊙ S
                if need_x:
                    part.mul_(scale)
                    if pairs is not None:
                        pairs[0].add_grad_(part, 0, pairs[1], r0)
                    gx[r0:r1] = part
            if acc is not None:
                mm.add_product(acc, W.t(), x_op[r0:r1])
    gy = None
    if acc is not None:
        if ky is not None:
            remove_radial_(acc, y, ky)
        acc.mul_(scale)
        if pairs is not None:
            pairs[0].add_grad_(acc, 1, pairs[1])
        gy = acc.to(y.dtype)
    elif need_y:  # the transposed problem's rows: y against x, the terms (and scales) swapped
        gy = torch.empty_like(y)
        flipped = None if scales is None else scales[::-1]
        for c0, W in _weight_chunks(
            y, x, ly, lx, labels, z_scale, col_term, row_term, mm.operand_dtype, scales=flipped
        ):
            c1 = c0 + W.shape[0]
            part = mm(W, x_op)
            if ky is not None:
                remove_radial_(part, y[c0:c1], ky[c0:c1])
            part.mul_(scale)
            if pairs is not None:
                pairs[0].add_grad_(part, 1, pairs[1], c0)
            gy[c0:c1] = part
    return gx, gy, ws * scale


# ----------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------


class LsePairsTriton(torch.autograd.Function):
    """forward(x, y, margin, tau, a, p_idx, labels, ref_labels, do_i2t, do_t2i, paired, cosine, groups) →
    (L¹, L²), each (P,) float32; see the module docstring. ``groups``: the forward's program grid, or None."""

    @staticmethod
    def forward(ctx, x, y, margin, tau, a, p_idx, labels, ref_labels, do_i2t, do_t2i, paired, cosine, groups):
        xc, yc, lx, ly = pair_operands(x, y, labels, ref_labels, "lse_pairs_triton")
        scales = cosine_scale_pair(xc, yc, cosine, torch.float32, y is x)  # folded into the kernels
        pairs = PairScores.computed(xc, yc, a, p_idx, scales, paired, row_dots_forward_triton, torch.float32)
        tw = (pairs.s - margin).to(torch.float32)  # the thresholds
        tv = float(tau)
        z_scale = LOG2E / tv
        P = a.shape[0]
        row = col = None  # base-2 statistics of x's rows (i2t) and y's rows (t2i, S's columns)
        if P and do_i2t:
            row, col = _statistics(xc, yc, lx, ly, not paired, z_scale, do_t2i, groups, scales=scales)
        elif P and do_t2i:  # t2i alone: the rows of the transposed problem
            flipped = None if scales is None else scales[::-1]
            col, _ = _statistics(yc, xc, ly, lx, not paired, z_scale, False, groups, scales=flipped)
        zeros = torch.zeros(P, device=x.device, dtype=torch.float32)
        L1 = zeros if row is None else F.softplus(row[a] * LN2 - tw / tv)
        L2 = zeros if col is None else F.softplus(col[p_idx] * LN2 - tw / tv)
        ctx.save_for_backward(xc, yc, tw, a, p_idx, lx, ly, row, col, pairs.s, *(scales or ()))
        ctx.tau, ctx.z_scale, ctx.labels, ctx.paired = tv, z_scale, not paired, paired
        ctx.tau_dtype = tau.dtype if torch.is_tensor(tau) else None
        ctx.margin = (margin.dtype, margin.shape) if torch.is_tensor(margin) else None
        ctx.dtypes = (x.dtype, y.dtype)
        return L1, L2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        xc, yc, tw, a, p_idx, lx, ly, row, col, s, *scales = ctx.saved_tensors
        scales = scales or None
        tau = ctx.tau
        need_x, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_tau = ctx.tau_dtype is not None and ctx.needs_input_grad[3]
        B, M = xc.shape[0], yc.shape[0]
        f32 = dict(device=xc.device, dtype=torch.float32)
        gt = torch.zeros(tw.shape, **f32)
        row_term = col_term = None
        # c_j = g_j σ_j/τ: ∂t_j = −c¹_j − c²_j, and the pairs' sums per row (column) weigh W
        if row is not None and g1 is not None:
            c1 = g1.to(torch.float32) * torch.sigmoid(row[a] * LN2 - tw / tau) / tau
            gt -= c1
            row_term = (row, torch.zeros(B, **f32).index_add_(0, a, c1))
        if col is not None and g2 is not None:
            c2 = g2.to(torch.float32) * torch.sigmoid(col[p_idx] * LN2 - tw / tau) / tau
            gt -= c2
            col_term = (col, torch.zeros(M, **f32).index_add_(0, p_idx, c2))
        gx = gy = gtau = None
        if row_term is not None or col_term is not None:
            # t = s(a, p) − α: the pairs' scores pass ∂t on to the rows of x and y
            pairs = (PairScores(xc, yc, a, p_idx, scales, ctx.paired, s), gt)
            gx, gy, ws = _products(
                xc,
                yc,
                lx,
                ly,
                ctx.labels,
                ctx.z_scale,
                row_term,
                col_term,
                need_x,
                need_y,
                need_tau,
                scales,
                pairs,
            )
            if need_tau:
                gtau = (-(ws + (gt * tw).sum()) / tau).to(ctx.tau_dtype)
        elif need_tau:
            gtau = torch.zeros((), device=xc.device, dtype=ctx.tau_dtype)
        x_dtype, y_dtype = ctx.dtypes
        gx = torch.zeros_like(xc) if need_x and gx is None else gx
        gy = torch.zeros_like(yc) if need_y and gy is None else gy
        gm = None
        if ctx.margin is not None and ctx.needs_input_grad[2]:
            gm = (-gt).sum_to_size(ctx.margin[1]).to(ctx.margin[0])
        return (
            None if gx is None else gx.to(x_dtype),
            None if gy is None else gy.to(y_dtype),
            gm,
            gtau,
            *[None] * 9,
        )


def lse_pairs_triton(
    x,
    y,
    margin,
    tau,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    do_i2t: bool = True,
    do_t2i: bool = True,
    paired: bool = False,
    cosine: bool = False,
    _groups: tuple[int, int] | None = None,
):
    """``(L¹, L²)``, each (P,) float32 (zeros for a direction not asked for), as
    :func:`~vse_losses.ops.chunked_lse_pairs.lse_pairs_chunked`: x (B, D), y (M, D) float32/float16/
    bfloat16, ``margin`` α a float or a tensor broadcastable to (P,) (differentiable; the
    thresholds are ``s(a_j, p_j) − α_j``), τ a float or a 0-dim tensor (differentiable),
    ``(a, p_idx)`` the positive pairs (any order), labels (B,), ref_labels (M,); ``paired``: labels
    ``arange`` on both sides, pair j is (j, j) (the negatives are every i ≠ n, without reading the
    labels). ``self_ref`` (y is x, ref_labels are labels) asks for nothing more: a sample's pair
    with itself has equal labels. ``cosine``: the scores are the cosines of the rows of x and y
    (the gradients those of x and y). ``_groups``: the forward's (P, Q) program grid, for tests."""
    return LsePairsTriton.apply(
        x, y, margin, tau, a, p_idx, labels, ref_labels, bool(do_i2t), bool(do_t2i), bool(paired), bool(cosine), _groups
    )
