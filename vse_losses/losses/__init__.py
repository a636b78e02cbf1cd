from .base_violation_loss import BaseViolationLoss
from .info_nce_loss import InfoNCELoss
from .log_sum_exp_violation_loss import LogSumExpViolationLoss
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
    "LogSumExpViolationLoss",
    "InfoNCELoss",
]
