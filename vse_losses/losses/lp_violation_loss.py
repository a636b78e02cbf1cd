from .. import _checks
from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class LpViolationLoss(BaseViolationLoss):
    """ℓp norm of the violation vector, ``(Σ_n h_n^p)^{1/p}``.

    ``p=1`` is SumHingeLoss, ``p=float("inf")`` is MaxViolationLoss, and the loss is
    non-increasing in p: the smooth continuum between the paper's two losses. Computed stably
    (scaled by the largest violation); a term without violation is 0 with a finite gradient.

    Args:
        p: the order of the norm, ≥ 1 (``float("inf")`` allowed).
        **kwargs: see BaseViolationLoss.
    """

    def __init__(self, p: float = 2.0, **kwargs):
        self.p = _checks.check_p(p)
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=["p"], is_stat=False)

    def norm(self) -> Norm:
        return norm_of("lp", p=self.p)
