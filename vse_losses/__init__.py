"""VSE++ hard-negative ranking losses as pytorch-metric-learning losses.

from vse_losses import MaxViolationLoss
loss = MaxViolationLoss(margin=0.2)(img_emb, cap_emb)
"""

from . import functional
from ._pml_registration import register_with_cross_batch_memory
from .collapse import CollapseAlarm, CollapseWarning
from .losses import (
    BaseViolationLoss,
    InfoNCELoss,
    LogSumExpViolationLoss,
    LpViolationLoss,
    MaxViolationLoss,
    MixedViolationLoss,
    SumHingeLoss,
    TopKViolationLoss,
)
from .miners import HardestNegativeMiner, TopKNegativeMiner
from .ops import TritonFallbackWarning
from .order import OrderSimilarity
from .schedules import SHToMHWarmup

register_with_cross_batch_memory()

__version__ = "0.1.0"

__all__ = [
    "functional",
    "BaseViolationLoss",
    "SumHingeLoss",
    "MaxViolationLoss",
    "TopKViolationLoss",
    "LpViolationLoss",
    "MixedViolationLoss",
    "LogSumExpViolationLoss",
    "InfoNCELoss",
    "SHToMHWarmup",
    "CollapseAlarm",
    "CollapseWarning",
    "OrderSimilarity",
    "HardestNegativeMiner",
    "TopKNegativeMiner",
    "TritonFallbackWarning",
]
