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
