from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class MaxViolationLoss(BaseViolationLoss):
    """Max of hinges, VSE++ (the paper's eq. 6, MH): the hardest negative takes all the gradient.

    Each positive pair (a, p) gives one term per direction, ``max_n [α − s(a, p) + s_n]_+`` over
    its negatives n. Ties pick the lowest index. See BaseViolationLoss for the arguments and call
    forms; with ``reducer=SumReducer()`` the value is the original VSE++ criterion's with
    ``max_violation=True``.

    Example::

        loss_fn = MaxViolationLoss(margin=0.2)
        loss = loss_fn(img_emb, cap_emb)                                   # paired
        loss = loss_fn(img_emb, ids, ref_emb=cap_emb, ref_labels=ids)      # PML, label-aware
    """

    def norm(self) -> Norm:
        return norm_of("max")
