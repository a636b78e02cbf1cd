"""The Triton kernels compile for an H100 (sm_90) with their default GPU tiles, without register
spills, within the shared memory of one SM, and, at the bf16 shapes whose rows load aligned (D a
multiple of 64: the benchmarks' shapes, and ragged batches of such rows), on Hopper's tensor-core
path (wgmma) with pipelined loads (cp.async): checked ahead of time on the
CPU (no GPU needed), where the other tests only run the kernels' logic in triton's interpreter,
which never compiles them. The compile mirrors triton's run-time specialization (16-byte aligned
pointers; sizes and strides divisible by 16 at the even shapes): without it the compiler neither
vectorizes nor pipelines the loads, and register counts are not those of the GPU run.

The compiler runs in a child process (benchmarks/compile_kernels.py) without TRITON_INTERPRET: in
this one the kernel tests have switched triton to its interpreter. To check another triton than the
installed one (the GPU machine's, say), install it aside and name it:

    pip install --no-deps --target /tmp/t36 triton==3.6.0
    VSE_COMPILE_TRITON_PATH=/tmp/t36 python -m pytest tests/ops/test_triton_compile.py
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# not imported here: triton reads TRITON_INTERPRET when it is first imported, and the kernel tests
# set it at their collection
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(ROOT, "benchmarks", "compile_kernels.py")

# the hinge kernels' mode: P_MODE (1: p = 1, 2: p = 2, 0: any other p), plus 4 for the scaled
# variant (the cosine folded in as row and column scales)
HINGE_MODES = (1, 2, 0, 5, 6, 4)
HINGE = [
    (kernel, dtype, mode, even)
    for kernel in ("hinge_forward", "hinge_pairs_forward", "hinge_weights")
    for dtype in ("bf16", "fp32")
    for mode in HINGE_MODES
    for even in (True, False)
]
# mode: 0 plain, 1 diagonal excluded (self_ref), 2 scaled (cosine folded in), 3 both
NEGMAX = [
    ("negative_max", dtype, mode, even) for dtype in ("bf16", "fp32") for mode in range(4) for even in (True, False)
]
# mode: 0 … 3 = (cosine, backward); "even" True: B = MAX_B, False: B = 16
SMALL = [("small_mh", dtype, mode, even) for dtype in ("bf16", "fp32") for mode in range(4) for even in (True, False)]
# mode: cosine; "even" True: D = 1024, False: D = 100
MH_SIDE = [("mh_side", dtype, mode, even) for dtype in ("bf16", "fp32") for mode in (0, 1) for even in (True, False)]
# B and M ragged, D a multiple of 64 (B = 1000, D = 1024): loads aligned, rows masked; bf16
ROWS = [
    (kernel, "bf16", mode, "rows")
    for kernel in ("hinge_forward", "hinge_pairs_forward", "hinge_weights")
    for mode in HINGE_MODES
] + [("negative_max", "bf16", mode, "rows") for mode in range(4)]
# mode: rows gathered by index; "even" True: D = 1024, False: D = 100
ROW_DOTS = [("row_dots", dtype, mode, even) for dtype in ("bf16", "fp32") for mode in (0, 1) for even in (True, False)]
# lse_pairs: forward mode 0 … 7, bits (labels, both directions' statistics, scaled: the cosine
# folded in); weights mode 0 … 3, bits (labels, scaled)
LSE = [
    (kernel, dtype, mode, shape)
    for kernel, modes in (("lse_forward", range(8)), ("lse_weights", range(4)))
    for dtype in ("bf16", "fp32")
    for mode in modes
    for shape in (True, False, "rows")
    if not (dtype == "fp32" and shape == "rows")
]
VARIANTS = HINGE + NEGMAX + SMALL + MH_SIDE + ROWS + ROW_DOTS + LSE


def variant_id(v):
    return "-".join(str(x) for x in v)


def compile_reports(variants, arch):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    other = os.environ.get("VSE_COMPILE_TRITON_PATH")
    env["PYTHONPATH"] = os.pathsep.join(([other] if other else []) + [ROOT, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, SCRIPT, json.dumps(variants), str(arch)], capture_output=True, text=True, env=env, timeout=900
    )
    if out.returncode == 3:
        pytest.skip(out.stdout.strip() or out.stderr.strip())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reports():
    return compile_reports(VARIANTS, 90)


# The small-batch kernel at B = 128 holds several 128×128 tiles in one program: it spills a few
# KiB per thread, harmless in a kernel that runs one program once (a few µs of L1/L2 traffic);
# the streaming kernels, whose loops run over the whole batch, may not spill at all.
SPILL_ALLOWANCE = {("small_mh", True): 8192}


SHARED_MEMORY_PER_BLOCK = 227 * 1024  # H100's opt-in maximum per block


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_compiles_without_spills(reports, variant):
    r = reports[variant_id(variant)]
    assert r["spill_bytes"] <= SPILL_ALLOWANCE.get((variant[0], variant[3]), 0), r["report"]
    assert 0 < r["registers"] <= 255
    assert r["shared"] <= SHARED_MEMORY_PER_BLOCK


STREAMING = [
    v for v in VARIANTS if v[0] not in ("small_mh", "mh_side", "row_dots") and v[1] == "bf16" and v[3] in (True, "rows")
]


@pytest.mark.parametrize("variant", STREAMING, ids=variant_id)
def test_even_bf16_kernels_use_wgmma_and_pipelined_loads(reports, variant):
    # the kernels that stream the whole batch must run near the product: on tensor cores, with
    # the next tiles' loads in flight (several shared-memory stages) while the current one multiplies
    r = reports[variant_id(variant)]
    assert r["wgmma"] > 0
    assert r["cp_async"] > 0  # triton issues cp.async only where its pipeliner multi-buffers the loads


# The other architectures a user may have (CUDA's opt-in shared memory per block, KiB): A100 (sm_80),
# RTX 30xx / A10 (sm_86), L4 / RTX 40xx (sm_89), B200 (sm_100), RTX 50xx (sm_120). Their tiles are
# the sm_90 ones adapted (triton_common.for_arch); compiled here for the variants that stress them
# most: the general p (most registers; plain and scaled) at both shape classes, the
# diagonal+scaled search, the small-batch kernel at its largest batch and backward, lse_pairs with
# labels and both directions, plain and scaled.
OTHER_ARCHS = {80: 163, 86: 99, 89: 99, 100: 227, 120: 99}
ARCH_VARIANTS = (
    [
        (k, d, m, e)
        for k in ("hinge_forward", "hinge_pairs_forward", "hinge_weights")
        for m in (0, 4)
        for d in ("bf16", "fp32")
        for e in (True, False)
    ]
    + [("negative_max", d, 3, e) for d in ("bf16", "fp32") for e in (True, False)]
    + [("negative_max", "fp32", 1, True)]
    + [("small_mh", d, 3, True) for d in ("bf16", "fp32")]
    + [("mh_side", "fp32", 1, False), ("row_dots", "bf16", 1, False)]
    + [
        (k, d, m, e)
        for k, m in (("lse_forward", 3), ("lse_forward", 7), ("lse_weights", 1), ("lse_weights", 3))
        for d in ("bf16", "fp32")
        for e in (True, False)
    ]
)


@pytest.fixture(scope="module", params=sorted(OTHER_ARCHS), ids=lambda a: f"sm_{a}")
def arch_reports(request):
    return request.param, compile_reports(ARCH_VARIANTS, request.param)


# Before Hopper and on sm_120 ptxas caps some float32 variants at 80–168 registers (occupancy), and a
# few of them spill up to 36 bytes per thread whatever the tile (checked: 32–64-wide tiles, 4 or 8
# warps): a handful of stores to L1, against the hundreds or thousands of bytes the sm_90 tiles
# spilled there. Anything beyond 64 bytes is a tile to change.
OTHER_ARCH_SPILL_BYTES = 64


def test_other_architectures_compile_within_their_limits(arch_reports):
    arch, reports = arch_reports
    problems = {
        name: (r["spill_bytes"], r["registers"], r["shared"])
        for name, r in reports.items()
        if r["spill_bytes"]
        > max(OTHER_ARCH_SPILL_BYTES, SPILL_ALLOWANCE.get((name.split("-")[0], name.endswith("True")), 0))
        or not 0 < r["registers"] <= 255
        or r["shared"] > OTHER_ARCHS[arch] * 1024
    }
    assert not problems, f"sm_{arch}: (spill bytes, registers, shared bytes) {problems}"
    assert len(reports) == len(ARCH_VARIANTS)
