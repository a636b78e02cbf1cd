"""The GPU's tiles compute the same losses (CPU: triton's interpreter). The other kernel tests run
the interpreter's small tiles; here every kernel's tile choice for the GPU (bf16 at even shapes,
ragged batches of aligned rows, unaligned rows; fp32) runs instead, on float32 data, through the
losses' whole triton path against dense — so that a tile-dependent bug cannot hide behind the
sm_90 compile check, which compiles those tiles but never runs them."""

import pytest
import torch

from tests.support.cases import LOSS_CASES, loss_and_grads
from vse_losses.ops import triton_available

pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="triton not importable"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these tiles in the other tests"),
]


@pytest.fixture(params=[torch.bfloat16, torch.float32], ids=["bf16-tiles", "fp32-tiles"])
def gpu_tiles(request, monkeypatch):
    """Every kernel's tile choice as compiled for the GPU, for ``request.param`` inputs."""
    from vse_losses.ops import triton_hinge_norm as hn
    from vse_losses.ops import triton_hinge_norm_pairs as hp
    from vse_losses.ops import triton_lse_pairs as lp
    from vse_losses.ops import triton_max_violation_backward as mb
    from vse_losses.ops import triton_max_violation_small as sm
    from vse_losses.ops import triton_negative_max as nm

    tile_dtype = request.param

    def as_gpu(fn):
        return lambda dtype, interpret, *a, **k: fn(tile_dtype, False, *a, **k)

    configs = [(nm, "_default_config"), (hn, "_fwd_config"), (hn, "_weight_config"), (hp, "_pairs_config")]
    configs += [(lp, "_fwd_config"), (lp, "_weight_config")]
    for mod, name in configs:
        monkeypatch.setattr(mod, name, as_gpu(getattr(mod, name)))
    small = sm._config
    monkeypatch.setattr(sm, "_config", lambda B, dtype, interpret: small(B, tile_dtype, False))
    side = mb._config
    monkeypatch.setattr(mb, "_config", lambda D, interpret: side(D, False))
    return tile_dtype


# even (B, D multiples of 128 / 64), ragged batch of aligned rows, nothing aligned; B ≤ 128 for the
# small MH kernel
SHAPES = [(256, 128), (300, 128), (150, 100), (100, 64)]


CASES = LOSS_CASES + [("LpViolationLoss", {"p": 2.0}, {"kind": "lp", "p": 2.0})]  # p = 2 has its own kernels


# the paired call at every shape; the labelled call (B ≠ M, repeated labels: the per-direction
# kernels) at a ragged batch of aligned rows (B = 160, M = 197: at least two tiles in each
# dimension, the last partial, whatever the configuration's tile)
RUNS = [(B, D, False) for B, D in SHAPES] + [(160, 128, True)]


@pytest.mark.parametrize("B,D,labelled", RUNS)
@pytest.mark.parametrize("name,kwargs,norm", CASES)
def test_gpu_tiles_match_dense(gpu_tiles, name, kwargs, norm, B, D, labelled):
    g = torch.Generator().manual_seed(B + D)
    M = B + 37 if labelled else B
    x0, y0 = torch.randn(B, D, generator=g), torch.randn(M, D, generator=g)
    labels = torch.randint(0, 40, (B,), generator=g) if labelled else None
    ref_labels = torch.randint(0, 40, (M,), generator=g) if labelled else None
    results = {impl: loss_and_grads(name, kwargs, impl, x0, y0, labels, ref_labels) for impl in ("dense", "triton")}
    for what, got, ref in zip(("loss", "grad x", "grad y"), results["triton"], results["dense"]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, msg=lambda m, what=what: f"{what}: {m}")
