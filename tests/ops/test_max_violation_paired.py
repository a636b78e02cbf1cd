"""The paired max-violation Function (cosine folded in, O(B) memory) against float64 autograd of
the explicit formula: one chunk and several, ties, zero rows, B = 1 and 2, gradcheck."""

import pytest
import torch

from tests.support.reference import paired_max_violation as reference
from vse_losses.ops import CHUNKED
from vse_losses.ops import chunked_max_violation_backward as side
from vse_losses.ops import max_violation_paired as mvp


def run(x0, y0, margin, cosine, w1, w2):
    out = {}
    for name, fn in (
        ("got", lambda a, b: mvp.max_violation_paired(a, b, margin, cosine, CHUNKED)),
        ("ref", lambda a, b: reference(a, b, margin, cosine)),
    ):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        i2t, t2i = fn(x, y)
        gx, gy = torch.autograd.grad((i2t * w1).sum() + (t2i * w2).sum(), (x, y))
        out[name] = (i2t.detach(), t2i.detach(), gx, gy)
    return out["got"], out["ref"]


@pytest.mark.parametrize("cosine", [True, False])
@pytest.mark.parametrize("B", [1, 2, 9, 40])
@pytest.mark.parametrize("tile", [1 << 22, 12])  # one chunk; chunks of 2 rows (D = 6)
def test_matches_float64_autograd(monkeypatch, cosine, B, tile):
    monkeypatch.setattr(side, "TILE_ELEMENTS", tile)
    g = torch.Generator().manual_seed(B)
    x = torch.randn(B, 6, dtype=torch.float64, generator=g) * 3
    y = torch.randn(B, 6, dtype=torch.float64, generator=g) * 3
    w1, w2 = torch.randn(B, dtype=torch.float64, generator=g), torch.randn(B, dtype=torch.float64, generator=g)
    margin = 0.2 if cosine else 2.0  # enough active hinges either way
    got, ref = run(x, y, margin, cosine, w1, w2)
    for name, a, b in zip(("i2t", "t2i", "grad x", "grad y"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("tile", [1 << 22, 12])
def test_collapse_ties_and_zero_rows(monkeypatch, tile):
    # every caption identical: every column ties, the lowest row wins and receives every gradient;
    # a zero image row: normalisation divides by ε
    monkeypatch.setattr(side, "TILE_ELEMENTS", tile)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 6, dtype=torch.float64, generator=g)
    x[3] = 0.0
    y = torch.randn(1, 6, dtype=torch.float64, generator=g).expand(7, 6).contiguous()
    w1, w2 = torch.rand(7, dtype=torch.float64, generator=g), torch.rand(7, dtype=torch.float64, generator=g)
    got, ref = run(x, y, 0.2, True, w1, w2)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mvp.max_violation_paired(a, b, 0.5, True, CHUNKED), (x, y))


def test_memory_is_linear_in_the_batch():
    # nothing B×B and no normalised copy of the inputs is saved for the backward
    x = torch.randn(300, 8, requires_grad=True)
    y = torch.randn(300, 8, requires_grad=True)
    i2t, _ = mvp.max_violation_paired(x, y, 0.2, True, CHUNKED)
    saved = i2t.grad_fn.saved_tensors
    assert any(t is x for t in saved) and any(t is y for t in saved)
    assert all(t is x or t is y or t.dim() == 1 for t in saved)
