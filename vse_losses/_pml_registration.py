"""Make PML's CrossBatchMemory accept this library's losses.

CrossBatchMemory checks the loss's class name against a fixed list (``supported_losses``) and has
no registry, so the names are appended to that list once, at import. Our losses handle the pair
``indices_tuple`` it passes (all pairs with the memory, minus each item's own slot) exactly.
"""

from __future__ import annotations


def register_with_cross_batch_memory() -> None:
    from .losses import __all__ as names

    loss_names = [n for n in names if n != "BaseViolationLoss"]
    try:
        from pytorch_metric_learning.losses import CrossBatchMemory
    except ImportError:  # a PML without CrossBatchMemory: nothing to register
        return
    original = CrossBatchMemory.supported_losses
    if getattr(original, "_vse_losses", False):
        return

    def supported_losses():
        return list(original()) + [n for n in loss_names if n not in original()]

    supported_losses._vse_losses = True
    CrossBatchMemory.supported_losses = staticmethod(supported_losses)
