from .base_violation_loss import BaseViolationLoss
from .lp_violation_loss import LpViolationLoss
from .max_violation_loss import MaxViolationLoss
from .mixed_violation_loss import MixedViolationLoss
from .sum_hinge_loss import SumHingeLoss
from .top_k_violation_loss import TopKViolationLoss

__all__ = [
    "BaseViolationLoss",
    "SumHingeLoss",
    "MaxViolationLoss",
    "TopKViolationLoss",
    "LpViolationLoss",
    "MixedViolationLoss",
]
