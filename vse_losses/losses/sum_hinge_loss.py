from ..norms import Norm, norm_of
from .base_violation_loss import BaseViolationLoss


class SumHingeLoss(BaseViolationLoss):
    """Sum of hinges, the paper's eq. 5 (SH, "VSE0").

    Each positive pair (a, p) gives one term per direction, ``Σ_n [α − s(a, p) + s_n]_+`` over its
    negatives n (captions of other images for i2t, other images for t2i). See BaseViolationLoss
    for the arguments and call forms; with ``reducer=SumReducer()`` the value is the original
    VSE++ criterion's.

    Example::

        loss_fn = SumHingeLoss(margin=0.2)
        loss = loss_fn(img_emb, cap_emb)                                   # paired
        loss = loss_fn(img_emb, ids, ref_emb=cap_emb, ref_labels=ids)      # PML, label-aware
    """

    def norm(self) -> Norm:
        return norm_of("sum")
