"""Every public name that this library offered before its one-dispatch redesign is still importable
(the redesign moved code, not names)."""

import importlib

import pytest

NAMES = {
    "vse_losses": [
        "functional",
        "BaseViolationLoss",
        "SumHingeLoss",
        "MaxViolationLoss",
        "TopKViolationLoss",
        "LpViolationLoss",
        "MixedViolationLoss",
        "SHToMHWarmup",
        "HardestNegativeMiner",
        "TopKNegativeMiner",
    ],
    "vse_losses.functional": [
        "Norm",
        "resolve_labels",
        "positive_pairs",
        "pair_masks",
        "violation_norm",
        "lp_norm",
        "violation_terms_from_scores",
        "violation_terms",
        "query_violation_terms",
        "selected_hinge_sum",
        "nan_guard",
        "sum_hinge_loss",
        "max_violation_loss",
        "top_k_violation_loss",
        "lp_violation_loss",
        "mixed_violation_loss",
    ],
    "vse_losses.ops": [
        "AUTO_CHUNKED_MIN_PAIRS",
        "triton_available",
        "resolve_impl",
        "negative_topk",
        "hinge_norm_rows",
        "hinge_norm_pairs",
    ],
    "vse_losses.distributed": [
        "is_initialized",
        "world_size",
        "gather_rows",
        "GlobalBatch",
        "gather_batch",
        "reduce_terms",
        "reducer_rule",
    ],
    "vse_losses.diagnostics": ["violation_stats"],
    "vse_losses.schedules": ["SHToMHWarmup"],
}


@pytest.mark.parametrize("module", sorted(NAMES))
def test_names_importable(module):
    mod = importlib.import_module(module)
    missing = [n for n in NAMES[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"


def test_selected_hinge_sum_keeps_its_impl_keyword():
    # the old call form (impl=...), every impl a kernel of: Σ_j [α − s_ap + q_n·k_{idx_nj}]_+
    import torch

    from vse_losses.functional import selected_hinge_sum

    g = torch.Generator().manual_seed(0)
    q, keys = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    idx = torch.tensor([[1, 2], [0, 5], [3, 4], [2, 2]])
    vals = torch.zeros(4, 2, dtype=torch.float64)
    s_ap = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    expected = torch.stack(
        [sum(torch.clamp(0.2 - s_ap[n] + q[n] @ keys[j], min=0) for j in idx[n].tolist()) for n in range(4)]
    )
    for impl in ("dense", "chunked", "auto"):
        got = selected_hinge_sum(q, keys, vals, idx, s_ap, 0.2, impl=impl)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
