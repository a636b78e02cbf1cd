"""Tiles of the chunked kernels: how many rows one holds, and which of its entries are not negatives;
the cosine scales that the kernels fold into their score tiles instead of normalising copies, and
the positive pairs' scores of the pair operations' thresholds."""

from __future__ import annotations

import torch

# elements of one (rows × M) float32 score tile: 16 MiB. The chunked kernels keep a few such
# buffers alive, so their extra memory is O(TILE_ELEMENTS), whatever B and M are.
TILE_ELEMENTS = 1 << 22
# on CUDA a tile is one round of kernel launches: 16× larger tiles (256 MiB) keep the launches
# few against the work (64 tiles at B = M = 65,536 instead of 1,024)
TILE_ELEMENTS_CUDA = 1 << 26
MIN_TILE_ROWS = 64
EPS = 1e-12  # as F.normalize and PML's CosineSimilarity


def cosine_scales(t: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
    """(N,) ``c_i = 1/max(‖t_i‖, ε)`` in ``wide``: the scores of the l2-normalised rows are
    ``c_i c_j x_i·y_j``, without a normalised copy of t."""
    return torch.linalg.vector_norm(t, dim=1, dtype=wide).clamp_min(EPS).reciprocal()


def cosine_scale_pair(x, y, cosine: bool, wide: torch.dtype | None = None, same: bool | None = None):
    """``(c_x, c_y)`` of :func:`cosine_scales` in ``wide`` (default float32, float64 for float64
    inputs), one vector for both when ``same`` (default: ``y is x``, one modality); None without
    the cosine."""
    if not cosine:
        return None
    wide = wide or torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    cx = cosine_scales(x, wide)
    return cx, (cx if (y is x if same is None else same) else cosine_scales(y, wide))


def radial_coefficients(c: torch.Tensor) -> torch.Tensor:
    """``c²`` where the row's norm exceeds ε (c < 1/ε), else 0: the factor of the normalisation's
    share of a row's gradient (F.normalize divides a shorter row by the constant ε: no share)."""
    return torch.where(c * EPS < 1.0, c * c, torch.zeros((), dtype=c.dtype, device=c.device))


def remove_radial_(g: torch.Tensor, v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """In place, row by row: ``g_i ← g_i − k_i A_i v_i`` with ``A_i = v_i·g_i``; returns A (N,).
    ``k`` (N,): floating, or bool (1 where True).
    With ``g = W̃ w`` (``W̃_ij = c_i W_ij c_j``, W the gradient of the cosines ``s_ij = c_i c_j
    v_i·w_j``) and k = c² (:func:`radial_coefficients`) this makes g the gradient of v itself,
    ``∂v_i = (W̃ w)_i − c_i² (Σ_j W_ij s_ij) v_i``, as ``Σ_j W_ij s_ij = A_i``. Rows in chunks of
    TILE_ELEMENTS (O(chunk) temporaries)."""
    N, D = g.shape
    step = max(1, TILE_ELEMENTS // max(D, 1))
    if N <= step:  # one chunk, in method calls: at small batches every microsecond counts
        v = v.to(g.dtype)
        A = g.mul(v).sum(1)
        g.addcmul_(k.mul(A).unsqueeze(1), v, value=-1.0)
        return A
    A = torch.empty(N, dtype=g.dtype, device=g.device)
    for r0 in range(0, N, step):
        gr, vr = g[r0 : r0 + step], v[r0 : r0 + step].to(g.dtype)
        a = (gr * vr).sum(1)
        A[r0 : r0 + step] = a
        gr.sub_((k[r0 : r0 + step] * a)[:, None] * vr)
    return A


class PairScores:
    """The positive pairs' scores ``s_j = c_{a_j} c_{p_j} x_{a_j}·y_{p_j}`` (c: the cosine scales, or
    1), from which the pair operations make their thresholds ``t_j = s_j − α_j``, and the gradient
    of ``Σ_j g_j s_j`` added to blocks of rows of ∂x and ∂y inside the operation's backward (the
    thresholds' path needs no gradient-sized buffer of its own, as it would through autograd):

        ∂x_{a_j} += g_j (c_a c_p y_{p_j} − c_a² s_j x_{a_j}),   ∂y_{p_j} += g_j (c_a c_p x_{a_j} − c_p² s_j y_{p_j}),

    the second terms only with scales (0 where ‖row‖ ≤ ε, as :func:`radial_coefficients`).
    ``s``: the scores (:meth:`computed` makes them); ``paired``: pair j is (j, j) (no gathers)."""

    def __init__(self, x, y, a, p_idx, scales, paired, s):
        self.x, self.y, self.a, self.p, self.scales, self.paired, self.s = x, y, a, p_idx, scales, paired, s
        self._sorted = {}  # side → (pairs sorted by their row on that side, those rows)

    @classmethod
    def computed(cls, x, y, a, p_idx, scales, paired, forward, wide):
        """The scores by ``forward``, a backend's row_dots forward ``(q, k, qi, ki, n) → (n,)``, in
        ``wide`` (no gradient: :meth:`add_grad_` is their backward)."""
        with torch.no_grad():
            s = forward(x, y, None if paired else a, None if paired else p_idx, a.shape[0]).to(wide)
            if scales is not None:
                s = s * scales[0][a] * scales[1][p_idx]
        return cls(x, y, a, p_idx, scales, paired, s)

    def add_grad_(self, out: torch.Tensor, side: int, g: torch.Tensor, r0: int = 0) -> None:
        """``out`` (R, D), rows r0 … r0 + R of ∂x (side 0) or ∂y (side 1) in a float dtype, plus the
        pairs' share for ``g = ∂L/∂s`` (P,); pairs in chunks of TILE_ELEMENTS (O(chunk) temporaries)."""
        wide = out.dtype
        own, own_idx, other, other_idx = (
            (self.x, self.a, self.y, self.p) if side == 0 else (self.y, self.p, self.x, self.a)
        )
        u, v = g.to(wide), None
        if self.scales is not None:
            c_own, c_other = self.scales if side == 0 else self.scales[::-1]
            u = u * c_own[own_idx] * c_other[other_idx]
            v = g.to(wide) * self.s * radial_coefficients(c_own)[own_idx]
        R, D = out.shape
        step = max(1, TILE_ELEMENTS // max(D, 1))
        if self.paired:  # pair j is row j: rows r0 … r0 + R, no gathers, added in place
            for j0 in range(r0, r0 + R, step):
                j1 = min(r0 + R, j0 + step)
                block = out[j0 - r0 : j1 - r0]
                block.addcmul_(u[j0:j1, None], other[j0:j1].to(wide))
                if v is not None:
                    block.addcmul_(v[j0:j1, None], own[j0:j1].to(wide), value=-1)
            return
        if side not in self._sorted:
            order = torch.argsort(own_idx, stable=True)
            self._sorted[side] = order, own_idx[order]
        order, rows = self._sorted[side]
        lo, hi = torch.searchsorted(rows, torch.tensor([r0, r0 + R], device=rows.device)).tolist()
        for j0 in range(lo, hi, step):  # the pairs whose row on this side is in the block
            jj = order[j0 : min(hi, j0 + step)]
            part = u[jj, None] * other[other_idx[jj]].to(wide)
            if v is not None:
                part -= v[jj, None] * own[own_idx[jj]].to(wide)
            out.index_put_((own_idx[jj] - r0,), part, accumulate=True)


def tile_rows(n_rows: int, n_cols: int, device: torch.device | None = None) -> int:
    """Rows per tile: as many as fit the device's tile budget, at least MIN_TILE_ROWS, at most n_rows."""
    budget = TILE_ELEMENTS_CUDA if device is not None and device.type == "cuda" else TILE_ELEMENTS
    return max(1, min(n_rows, max(MIN_TILE_ROWS, budget // max(n_cols, 1))))


def diagonal_pairs(a: torch.Tensor, p_idx: torch.Tensor, B: int, M: int, paired: bool = False) -> bool:
    """Whether pair j is (j, j) for every j of B = M rows: known (``paired``), or checked (one
    comparison of the index vectors, a device synchronisation on CUDA)."""
    if paired:
        return True
    if not a.shape[0] == B == M:
        return False
    eye = torch.arange(B, device=a.device)
    return torch.equal(a, eye) and torch.equal(p_idx, eye)


class SameLabel:
    """The (row, column) entries with equal labels, listed without comparing every pair.

    The column labels are sorted once; each row's run of equal labels is then found by binary
    search, so listing the entries of n rows costs O(n log M + #entries), not O(n·M).
    """

    def __init__(self, col_labels: torch.Tensor, paired: bool = False):
        # paired: the labels are 0 … M−1 on both sides (row a pairs with column a only), so the
        # entries of a row are its label itself: no sort, no search, no data-dependent size
        self.paired = paired
        if not paired:
            self.sorted, self.order = torch.sort(col_labels, stable=True)

    def entries(self, row_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)`` with ``row_labels[rows] == col_labels[cols]``, rows ascending."""
        if self.paired:
            return torch.arange(row_labels.shape[0], device=row_labels.device), row_labels
        lo = torch.searchsorted(self.sorted, row_labels, right=False)
        counts = torch.searchsorted(self.sorted, row_labels, right=True) - lo
        rows = torch.repeat_interleave(torch.arange(row_labels.shape[0], device=row_labels.device), counts)
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        return rows, self.order[starts + torch.arange(rows.shape[0], device=row_labels.device)]


def mask_non_negatives_(
    S: torch.Tensor,
    same: SameLabel,
    row_labels: torch.Tensor,
    row_self: torch.Tensor | None,
    fill: float,
) -> torch.Tensor:
    """Set the entries of the tile S (rows × M) that are not negatives to ``fill``, in place:
    the same-label entries and, where ``row_self[i] >= 0``, column ``row_self[i]`` of row i."""
    rows, cols = same.entries(row_labels)
    S[rows, cols] = fill
    if row_self is not None:
        keep = row_self >= 0
        S[torch.arange(S.shape[0], device=S.device)[keep], row_self[keep]] = fill
    return S


class Matmul:
    """Products with float32 results (float64 for float64 inputs), in the inputs' own precision
    where the device can: on CUDA, fp16/bf16 operands go to the tensor cores with an fp32 output
    (``torch.mm(..., out_dtype=torch.float32)``, torch ≥ 2.9); elsewhere both are widened first.
    The reductions always see the wide result, never a score rounded to half precision."""

    _native_ok = True  # cleared once if this torch has no out_dtype
    _native_add_ok = True  # cleared once if this torch's addmm has no out_dtype

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.wide = torch.promote_types(dtype, torch.float32)
        self.native = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and Matmul._native_ok
        self.operand_dtype = dtype if self.native else self.wide

    def operand(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the operand dtype (convert a large operand once, outside the tile loop)."""
        return t.to(self.operand_dtype)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self.operand(a), self.operand(b)
        if self.native:
            try:
                return torch.mm(a, b, out_dtype=torch.float32)
            except torch.cuda.OutOfMemoryError:  # the caller's, not a missing out_dtype
                raise
            except (TypeError, RuntimeError):
                Matmul._native_ok = self.native = False
                self.operand_dtype = self.wide
                a, b = self.operand(a), self.operand(b)
        return a @ b

    def add_product(self, acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """``acc += a @ b`` in ``acc``'s wide dtype, without a temporary where the backend can
        (the accumulations over row chunks would otherwise write and re-read a full-size
        product per chunk)."""
        if self.native and Matmul._native_add_ok:
            try:
                torch.addmm(acc, self.operand(a), self.operand(b), out_dtype=torch.float32, out=acc)
                return
            except torch.cuda.OutOfMemoryError:
                raise
            except (TypeError, RuntimeError):
                Matmul._native_add_ok = False
        if self.native:
            acc += self(a, b)
        else:
            acc.addmm_(self.operand(a), self.operand(b))


class PairTiles:
    """The row tiles of ``S = x yᵀ`` with the non-negatives at −∞, and the positive pairs whose row
    each tile holds: recomputed identically in forward and backward by the pair operations.
    ``scales``: ``(c_x (B,), c_y (M,))`` of :func:`cosine_scales`, in the wide dtype: the scores
    are then the cosines ``c_i c_j x_i·y_j`` and :meth:`backprop` / :meth:`finish` give the
    gradients of x and y themselves."""

    def __init__(self, x, y, a, p_idx, labels, ref_labels, self_ref, paired=False, scales=None):
        self.x, self.a, self.labels, self.self_ref = x, a, labels, self_ref
        self.mm = Matmul(x.dtype, x.device)
        self.wide, self.y = self.mm.wide, self.mm.operand(y)
        self.scales = scales
        self.same = SameLabel(ref_labels, paired)
        B, M, P = x.shape[0], y.shape[0], a.shape[0]
        self.tile = tile_rows(B, M + P, x.device)
        # the unlabelled case: pair j is (j, j), so the pairs' rows (and columns) are the tile itself
        self.diagonal = diagonal_pairs(a, p_idx, B, M, paired)

    def __iter__(self):
        B = self.x.shape[0]
        for r0 in range(0, B, self.tile):
            r1 = min(B, r0 + self.tile)
            S = self.mm(self.x[r0:r1], self.y.t())
            if self.scales is not None:
                cx, cy = self.scales
                S.mul_(cx[r0:r1, None]).mul_(cy)
            own = torch.arange(r0, r1, device=S.device) if self.self_ref else None
            mask_non_negatives_(S, self.same, self.labels[r0:r1], own, float("-inf"))
            if self.diagonal:  # pair j is (j, j): the tile's pairs are its rows (no device sync)
                j0, j1 = r0, r1
            else:
                j0, j1 = (int(v) for v in torch.searchsorted(self.a, torch.tensor([r0, r1], device=self.a.device)))
            yield r0, r1, j0, j1, S

    def rows_of_pairs(self, S, r0, j0, j1):
        """(j1 − j0, M): the tile's rows of the pairs j0..j1 (whose a lies in the tile)."""
        return S if self.diagonal else S[self.a[j0:j1] - r0]

    def scatter_rows(self, dS, W, r0, r1, j0, j1):
        """dS (the tile's score gradient, or None: zeros) plus the pairs j0..j1's row weights W
        (one row per pair) on the rows of those pairs."""
        if self.diagonal:
            return W if dS is None else dS.add_(W)
        if dS is None:
            dS = W.new_zeros((r1 - r0, W.shape[1]))
        return dS.index_add_(0, self.a[j0:j1] - r0, W)

    def scatter_cols(self, dS, W, p_idx):
        """dS (or None: zeros) plus the column weights W (one column per pair) on the columns
        ``p_idx`` of the pairs."""
        if self.diagonal:
            return W if dS is None else dS.add_(W)
        if dS is None:
            dS = W.new_zeros((W.shape[0], self.y.shape[0]))
        return dS.index_add_(1, p_idx, W)

    def backprop(self, dS, r0, r1, gx, gy):
        """The tile's share of ``∂x = dS y`` (rows r0..r1, written) and ``∂y = dSᵀ x`` (added).
        With scales, dS (the scores' gradient, overwritten) becomes ``W̃ = c_x dS c_y`` and the rows
        of ∂x lose their radial part (:func:`remove_radial_`); ∂y's is removed by :meth:`finish`."""
        if dS is None:  # no direction asked for a gradient
            gx[r0:r1] = 0
            return
        if self.scales is None:
            gx[r0:r1] = self.mm(dS, self.y)
        else:
            cx, cy = self.scales
            dS.mul_(cx[r0:r1, None]).mul_(cy)
            part = self.mm(dS, self.y)
            remove_radial_(part, self.x[r0:r1], radial_coefficients(cx[r0:r1]))
            gx[r0:r1] = part
        self.mm.add_product(gy, dS.t(), self.x[r0:r1])

    def finish(self, gy):
        """∂y complete (every tile added): with scales, its radial part removed, in place."""
        if self.scales is not None:
            remove_radial_(gy, self.y, radial_coefficients(self.scales[1]))
        return gy
