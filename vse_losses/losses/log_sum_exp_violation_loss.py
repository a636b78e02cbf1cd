from .. import _checks
from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class LogSumExpViolationLoss(BaseViolationLoss):
    """A temperature-smoothed max violation (HAL's log-sum-exp): per positive pair and direction,
    over the same negatives as MH,

        τ·log(1 + Σ_n exp((α − s(a, p) + s_n)/τ)),

    the 1 standing for the positive itself. It is never below MH's term and at most
    τ·log(1 + #negatives) above it, so τ → 0 is MaxViolationLoss; with α = 0 it is τ times
    InfoNCE's term. Every negative gets gradient, the violating ones the most.

    Args:
        temperature: τ > 0, a number or a 0-dim tensor (which may require grad; its gradient is
            exact). May be changed between calls (validated), e.g. to a learned value each step.
        **kwargs: see BaseViolationLoss (``margin`` α, default 0.2).
    """

    def __init__(self, temperature=0.05, **kwargs):
        self._temperature = _checks.check_temperature(temperature)
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=["temperature"], is_stat=False)

    @property
    def temperature(self):
        return self._temperature

    @temperature.setter
    def temperature(self, value) -> None:
        self._temperature = _checks.check_temperature(value)

    def norm(self) -> Norm:
        return norm_of("lse", temperature=self._temperature)
