from ..norms import Norm, norm_of
from .log_sum_exp_violation_loss import LogSumExpViolationLoss


class InfoNCELoss(LogSumExpViolationLoss):
    """InfoNCE, CLIP's loss, with this library's label semantics: per positive pair and direction

        log(1 + Σ_n exp((s_n − s(a, p))/τ)) = −log softmax of the positive among itself and its negatives

    (with a ``margin`` α > 0, ``(α + s_n − s(a, p))/τ`` inside: an additive-margin softmax).

    The paired call with the default ``MeanReducer`` is CLIP's symmetric loss
    ``½(CE(S/τ, arange) + CE(Sᵀ/τ, arange))``. With labels every positive pair is its own term and
    an anchor's other positives are not among its negatives. It is :class:`LogSumExpViolationLoss`
    divided by τ, at any margin.

    Args:
        temperature: τ > 0, a number or a 0-dim tensor (which may require grad, as CLIP learns
            1/τ; its gradient is exact). May be changed between calls (validated).
        margin: α ≥ 0, default 0 (InfoNCE itself).
        **kwargs: see BaseViolationLoss.
    """

    def __init__(self, temperature=0.07, margin: float = 0.0, **kwargs):
        super().__init__(temperature=temperature, margin=margin, **kwargs)

    def norm(self) -> Norm:
        return norm_of("infonce", temperature=self.temperature)
