from .. import _checks
from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class MixedViolationLoss(BaseViolationLoss):
    """Linear mix of the paper's two losses per term: ``(1 − mix)·SH + mix·MH``.

    ``mix=0`` is exactly SumHingeLoss and ``mix=1`` exactly MaxViolationLoss. Training that
    starts with SH and moves to MH (as VSE∞ and ADAPT do) drives ``mix`` with
    :class:`vse_losses.SHToMHWarmup`.

    Args:
        mix: λ in [0, 1]; may be changed between calls (the attribute is validated).
        **kwargs: see BaseViolationLoss.
    """

    def __init__(self, mix: float = 0.0, **kwargs):
        self._mix = _checks.check_mix(mix)
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=["mix"], is_stat=False)

    @property
    def mix(self) -> float:
        return self._mix

    @mix.setter
    def mix(self, value: float) -> None:
        self._mix = _checks.check_mix(value)

    def norm(self) -> Norm:
        return norm_of("mix", mix=self._mix)
