from .. import _checks
from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class TopKViolationLoss(BaseViolationLoss):
    """Sum of the k largest hinges (the Ky Fan k-norm of the violation vector).

    ``k=1`` is MaxViolationLoss, ``k ≥ #negatives`` is SumHingeLoss, and the loss is
    non-decreasing in k: the discrete continuum between the paper's two losses.

    Args:
        k: number of hardest negatives per term, an integer ≥ 1.
        **kwargs: see BaseViolationLoss.
    """

    def __init__(self, k: int = 1, **kwargs):
        self.k = _checks.check_k(k)
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=["k"], is_stat=False)

    def norm(self) -> Norm:
        return norm_of("topk", k=self.k)
