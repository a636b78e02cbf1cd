"""The Triton plumbing every ``triton_*`` kernel module shares: the version gate, lazy jitting,
the kernel helpers (the score tile; guarded powers and reciprocals; the running ℓp statistics of
the hinge-norm kernels), and the work split of the fused searches.

This module imports without triton (``TRITON_AVAILABLE`` is then ``False``; ``triton`` and
``tl`` are ``None``). Kernels are plain functions handed to ``triton.jit`` at first use
(:func:`jitted`), so that ``TRITON_INTERPRET=1`` set after import (but before the first call)
still selects the CPU interpreter.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from .triton_interpreter_compat import patch_interpreter_index

# The oldest triton the kernels are checked with: tests/ops/test_triton_compile.py compiles every
# one for sm_90 with triton 3.3.1, 3.4.0, 3.5.1, 3.6.0 and 3.8.0, and the interpreter tests pass
# with each. Older releases (torch <= 2.6 ships them) are not used: "auto" takes the chunked path.
MIN_TRITON = (3, 3)


def version_tuple(version: str) -> tuple[int, int]:
    """``"3.6.0+git1a2b"`` → ``(3, 6)``."""
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


try:  # pragma: no cover - exercised by the import itself
    import triton
    import triton.language as tl

    TRITON_VERSION: str | None = str(triton.__version__)
    TRITON_AVAILABLE = version_tuple(TRITON_VERSION) >= MIN_TRITON
except Exception:  # ImportError, or a broken triton install
    triton = None
    tl = None
    TRITON_VERSION = None
    TRITON_AVAILABLE = False

__all__ = [
    "MIN_TRITON",
    "TRITON_AVAILABLE",
    "TRITON_VERSION",
    "triton",
    "tl",
    "triton_requirement",
    "is_interpreting",
    "kernel_helper",
    "score_tile",
    "chunk_score_tile",
    "chunk_grid",
    "store_chunk",
    "recip_pos",
    "pow_masked",
    "pow_pos",
    "lp_merge_tile",
    "jitted",
    "tile_args",
    "even_shape",
    "pair_operands",
    "num_sms",
    "choose_groups",
    "SHARED_MEMORY_KIB",
    "device_arch",
    "fit_shared_memory",
    "for_arch",
    "mma_from_registers",
]


def triton_requirement() -> str:
    """``"triton >= 3.3 (found 3.2.0)"``: what the errors that refuse the triton path say."""
    return f"triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]} (found {TRITON_VERSION or 'none'})"


def is_interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks for triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernel_helper(fn):
    """Marks a plain function that kernels call: :func:`jitted` jits it in the kernel's mode."""
    fn.kernel_helper = True
    return fn


@kernel_helper
def score_tile(
    x_rows,
    y_cols,
    row_ok,
    col_ok,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_ROWS: tl.constexpr,
    EVEN_COLS: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """The score tile ``x[rows] @ y[cols]ᵀ``, (BLOCK_M, BLOCK_N) float32 in registers, for every
    fused kernel. x_rows: (BLOCK_M, 1) pointers to the rows, y_cols: (1, BLOCK_N) pointers to the
    columns; the loads go unmasked where the EVEN flags say the tile and D are whole. float32
    inputs multiply in full float32 ("ieee", as torch's default float32 matmul; TF32 would err by
    about 1e-3), 16-bit inputs on tensor cores; the sums are float32 either way."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        kk = k0 + offs_k
        if EVEN_ROWS and EVEN_K:
            a = tl.load(x_rows + kk[None, :])
        else:
            a = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & (kk[None, :] < D), other=0.0)
        if EVEN_COLS and EVEN_K:
            b = tl.load(y_cols + kk[:, None])
        else:
            b = tl.load(y_cols + kk[:, None], mask=col_ok[None, :] & (kk[:, None] < D), other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@kernel_helper
def chunk_score_tile(
    q_ptr,
    k_ptr,
    r0,
    R,
    M,
    D,
    stride_q,
    stride_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr,
    EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Where the backward's weight kernels start: this program's (BLOCK_M, BLOCK_N) tile of a chunk
    of rows r0 .. r0 + R of q against the keys. Returns ``(pid_m, pid_n, loc, rows, row_ok, cols,
    col_ok, S)``: the tile's row and column index, the rows' places in the chunk and in q, the keys,
    their masks, and the score tile.

    The grid is one axis of cdiv(R, BLOCK_M) · cdiv(M, BLOCK_N) programs, row tiles fastest (the
    order a 2-D grid launches in): CUDA caps grid axis 1 at 65,535 blocks, which column tiles on it
    would reach at M ≈ 4M keys; axis 0 takes 2³¹ − 1."""
    n_m = tl.cdiv(R, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % n_m
    pid_n = pid // n_m
    loc = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = loc < R
    rows = r0 + loc
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < M
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q
    k_cols = k_ptr + cols.to(tl.int64)[None, :] * stride_k
    S = score_tile(q_rows, k_cols, row_ok, col_ok, D, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_M, EVEN_N, EVEN_K)
    return pid_m, pid_n, loc, rows, row_ok, cols, col_ok, S


def chunk_grid(R: int, M: int, cfg: dict) -> tuple:
    """The launch grid of a weight kernel over R rows and M keys (``chunk_score_tile``)."""
    return (triton.cdiv(R, cfg["BLOCK_M"]) * triton.cdiv(M, cfg["BLOCK_N"]),)


@kernel_helper
def store_chunk(w_ptr, w, loc, cols, row_ok, col_ok, stride_w):
    """The weights tile ``w`` into rows ``loc`` of the chunk W, in W's dtype."""
    w_ptrs = w_ptr + loc.to(tl.int64)[:, None] * stride_w + cols[None, :]
    tl.store(w_ptrs, w.to(w_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@kernel_helper
def recip_pos(v):
    """``1 / v`` where ``v > 0``, else 0 (v ≤ 0 or NaN): the scale of a maximum that may be 0."""
    pos = v > 0.0
    return tl.where(pos, 1.0 / tl.where(pos, v, 1.0), 0.0)


@kernel_helper
def pow_masked(r, p, mask):
    """``r^p = 2^(p log2 r)`` where ``mask``, else 0; log2 reads 1 elsewhere, so that r ≤ 0 there
    costs nothing. Under the mask r = 0 gives 0 (p > 0) and a NaN r stays NaN."""
    return tl.where(mask, tl.exp2(p * tl.log2(tl.where(mask, r, 1.0))), 0.0)


@kernel_helper
def pow_pos(r, p):
    """``r^p`` for ``r > 0``, else 0 (r ≤ 0 or NaN); p > 0."""
    return pow_masked(r, p, r > 0.0)


@kernel_helper
def lp_merge_tile(m, s, h, p, P_MODE: tl.constexpr, AXIS: tl.constexpr):
    """Running ℓp statistics ``(m, s)`` of hinges (m the largest so far, ``s = Σ (h / m)^p``, as
    in :mod:`~vse_losses.ops.lp_norm`) with a tile of hinges ``h ≥ 0`` merged in, reduced along
    AXIS (1: per row, 0: per column): the old sum is rescaled by ``(m / m')^p`` when the maximum
    grows to m'. P_MODE 1 (p = 1): ``s`` is Σ h and m stays as it is; 2: p = 2 (squares); 0: any
    other p. → ``(m', s')``."""
    if P_MODE == 1:
        new_m = m
        new_s = s + tl.sum(h, axis=AXIS)
    else:
        new_m = tl.maximum(m, tl.max(h, axis=AXIS))
        inv = recip_pos(new_m)
        r = h * tl.expand_dims(inv, AXIS)  # in [0, 1]
        r_old = m * inv
        if P_MODE == 2:
            pw = r * r
            scale = r_old * r_old
        else:
            pw = pow_pos(r, p)
            scale = pow_pos(r_old, p)
        new_s = s * scale + tl.sum(pw, axis=AXIS)
    return new_m, new_s


_JITTED = {}


def jitted(fn) -> _Launcher:
    """``fn`` jitted for the current mode (interpreter or compiled), once per mode, as a
    :class:`_Launcher`. The kernels of every ops/triton_* module are plain functions handed to
    ``triton.jit`` here, at first use, so that ``TRITON_INTERPRET=1`` set after import (but before
    the first call) still takes effect. A helper a kernel calls (marked ``@kernel_helper``) must be
    jitted in the same mode: its name in the kernel's module is bound to that first."""
    return _Launcher(_jit(fn))


def _jit(fn):
    """The ``triton.jit`` of ``fn`` for the current mode, its helpers bound (:func:`jitted`)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"{fn.__name__} needs {triton_requirement()}; install it or use impl='chunked'")
    key = (fn, is_interpreting())
    if key not in _JITTED:
        if key[1]:
            patch_interpreter_index()  # triton <= 3.6 with NumPy >= 2.4: see triton_interpreter_compat
        for name in fn.__code__.co_names:
            value = fn.__globals__.get(name)
            helper = getattr(value, "fn", value)  # a helper jitted before keeps the plain function as .fn
            if getattr(helper, "kernel_helper", False):
                fn.__globals__[name] = _jit(helper)
        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


class _Launcher:
    """A jitted kernel (``.kernel``) whose launches, ``launcher[grid](*args)``, run on the CUDA
    device of their first tensor argument: triton launches on the current device, which need not
    be the tensors' (one process driving several GPUs without ``torch.cuda.set_device``), and a
    kernel launched there would read another GPU's memory."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            device = next(a.device for a in args if torch.is_tensor(a))
            with launch_device(device):
                return launch(*args, **kwargs)

        return run


def launch_device(device: torch.device):
    """A context that makes ``device`` the current CUDA device where it is not already (a no-op
    context otherwise, and off CUDA)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def tile_args(cfg: dict, N: int, M: int, D: int) -> dict:
    """The keyword arguments of a score-tile kernel's launch from its tile ``cfg``: the blocks,
    whether each of N (rows), M (columns) and D is a whole number of blocks (its loads need no
    mask), and the warps and pipeline stages."""
    BM, BN, BK = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    return dict(
        BLOCK_M=BM,
        BLOCK_N=BN,
        BLOCK_K=BK,
        EVEN_M=N % BM == 0,
        EVEN_N=M % BN == 0,
        EVEN_K=D % BK == 0,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )


def even_shape(B: int, M: int, D: int) -> bool:
    """B and M multiples of 128 and D of 64: the shapes whose loads need no masks at 128/64 tiles."""
    return B % 128 == 0 and M % 128 == 0 and D % 64 == 0


def pair_operands(x, y, labels, ref_labels, op: str):
    """x and y contiguous in their common dtype (float32/float16/bfloat16, else ValueError naming
    ``op``), labels as contiguous int64 on x's device: the operands of the pair kernels."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{op} supports float32/float16/bfloat16 embeddings, got {dtype}")
    dev = x.device
    return (
        x.to(dtype).contiguous(),
        y.to(dtype).contiguous(),
        labels.to(device=dev, dtype=torch.int64).contiguous(),
        ref_labels.to(device=dev, dtype=torch.int64).contiguous(),
    )


# The shared memory one block may opt in to, KiB, per compute capability (CUDA's tables): the tiles
# below are chosen for sm_90 and cut to fit the others; an unknown architecture gets the smallest.
SHARED_MEMORY_KIB = {80: 163, 86: 99, 87: 163, 89: 99, 90: 227, 100: 227, 103: 227, 120: 99, 121: 99}


def device_arch(device: torch.device) -> int:
    """The compute capability as a number (9.0 → 90); 90 off CUDA (the interpreter, whose tiles are
    its own)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def fit_shared_memory(cfg: dict, arch: int, itemsize: int) -> dict:
    """``cfg`` with its pipeline cut to the shared memory of ``arch``: ``num_stages`` lowered (to no
    fewer than 2) until the multi-buffered operand tiles, num_stages × (BLOCK_M + BLOCK_N) × BLOCK_K
    × itemsize, leave 8 KiB of the block's shared memory for the epilogue's layout conversions.
    Past the limit a launch fails (out of resources); fewer stages only hide less load latency."""
    if "num_stages" not in cfg or "BLOCK_K" not in cfg:
        return cfg
    budget = (SHARED_MEMORY_KIB.get(arch, min(SHARED_MEMORY_KIB.values())) - 8) * 1024
    per_stage = (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"] * itemsize
    stages = cfg["num_stages"]
    while stages > 2 and stages * per_stage > budget:
        stages -= 1
    return dict(cfg, num_stages=stages)


def mma_from_registers(arch: int) -> bool:
    """The tensor cores take both operands and the accumulator from registers (mma.sync): before
    Hopper, and on the consumer Blackwell parts (sm_120); not wgmma (sm_90) nor tcgen05 (sm_100)."""
    return arch < 90 or arch >= 120


def for_arch(cfg: dict, arch: int, dtype: torch.dtype, narrow: bool = False) -> dict:
    """An sm_90 tile configuration adapted to ``arch``, then :func:`fit_shared_memory`. Where the
    tensor cores read registers (:func:`mma_from_registers`) the kernels that carry running
    statistics beside the score tile (``narrow``) spill at 128-wide tiles: BLOCK_M and BLOCK_N are
    capped at 64, and float32 tiles are 32 × 64 × 16. On sm_100 every tile is at most 64
    wide in N. Found by compiling every variant for each architecture; checked by
    tests/ops/test_triton_compile.py."""
    if "BLOCK_N" in cfg and narrow and mma_from_registers(arch):
        cfg = dict(cfg, BLOCK_M=min(cfg["BLOCK_M"], 64), BLOCK_N=min(cfg["BLOCK_N"], 64))
        if dtype == torch.float32:
            cfg.update(BLOCK_M=32, BLOCK_K=min(cfg["BLOCK_K"], 16))
    if "BLOCK_N" in cfg and arch // 10 == 10:
        cfg = dict(cfg, BLOCK_N=min(cfg["BLOCK_N"], 64))
    itemsize = torch.empty((), dtype=dtype).element_size()
    return fit_shared_memory(cfg, arch, itemsize)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def choose_groups(
    nrb: int, nct: int, B: int, M: int, n_sm: int, max_partial_bytes: int = 256 * 2**20
) -> tuple[int, int]:
    """Number of row groups P and column groups Q (grid = P x Q programs).

    Aim at about 8 programs per SM (good wave quantisation, each program still owns many
    tiles so that it re-reads its x block from L2, not HBM), with the partial buffers
    ``(Q * B + P * M) * 8`` bytes under ``max_partial_bytes`` — but never below 2 programs per SM
    (or every tile its own program): at B = M = 1,048,576 the cap alone would leave 40 programs
    for 132 SMs, so there the partials take what two per SM need (about 272 MiB on an H100,
    beside inputs of 4 GiB in bf16). ``M = 0``: no column partials.
    """
    target = 8 * n_sm
    floor = min(2 * n_sm, nrb * nct)
    P = max(1, min(nrb, int(math.ceil(math.sqrt(target)))))
    Q = max(1, min(nct, int(math.ceil(target / P))))
    while (Q * B + P * M) * 8 > max_partial_bytes and (P > 1 or Q > 1):
        P2, Q2 = ((P + 1) // 2, Q) if P >= Q and P > 1 else (P, (Q + 1) // 2)
        if P2 * Q2 < floor:
            break
        P, Q = P2, Q2
    return P, Q
