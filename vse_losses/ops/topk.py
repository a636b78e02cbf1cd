"""The k largest entries with ties to the lowest index, which ``torch.topk`` does not promise."""

from __future__ import annotations

import torch


def topk_lowest(
    v: torch.Tensor, k: int, dim: int = -1, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` largest entries of ``v`` along ``dim`` (k ≤ its size).

    The values are ``torch.topk``'s (descending; NaN counts as the largest). Among entries equal
    to the k-th value, those with the lowest index are taken, as ``max`` does for k = 1: the
    library's rule for ties in every implementation. ``index``: the entries' indices (same shape as
    ``v``; default their positions along ``dim``), returned for the selected entries and used for
    that rule (merging the candidates of several tiles). Cost: off CUDA, one comparison and its
    count on the host; where entries beyond those taken tie with the k-th value (and always on
    CUDA, where that check would synchronise), a second ``topk`` over the tied entries' indices.
    """
    if k == 1:  # max's index is the first maximal one (documented; torch.topk's is not)
        vals, pos = v.max(dim, keepdim=True)
    else:
        vals, pos = torch.topk(v, k, dim=dim)
    chosen = pos if index is None else index.gather(dim, pos)
    if k <= 1:
        return vals, chosen
    kth = vals.narrow(dim, k - 1, 1)
    # no entry at least the k-th value beyond the k taken (the usual case with real-valued scores):
    # topk's choice is the only one
    if _host_check(v) and int((v >= kth).sum()) == vals.numel():
        return vals, chosen
    tied = v == kth
    in_tie = vals == kth  # the selected slots holding the k-th value: the last c (values descending)
    c = in_tie.sum(dim, keepdim=True)
    if index is None:
        index = _arange_along(v, dim, v.shape[dim])
    # the tied entries' indices, lowest first (the others pushed below every index); slot j of the
    # last c takes the (j − (k − c))-th. A NaN k-th value ties with nothing: topk's choice stays
    key = torch.where(tied, -index, torch.iinfo(torch.int64).min + 1)
    lowest = -torch.topk(key, k, dim=dim).values
    rank = (_arange_along(v, dim, k) - (k - c)).clamp_(min=0)
    return vals, torch.where(in_tie, lowest.gather(dim, rank), chosen)


def _arange_along(v: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """0 .. n − 1 along ``dim`` of a tensor of v's rank (size 1 elsewhere), on v's device."""
    shape = [1] * v.ndim
    shape[dim] = n
    return torch.arange(n, device=v.device).view(shape)


def _host_check(v: torch.Tensor) -> bool:
    """Whether :func:`topk_lowest` may look at its counts on the host: off CUDA, where that is
    free (on a GPU it would synchronise), and not in a compiled graph (no data-dependent branch)."""
    return not v.is_cuda and not torch.compiler.is_compiling()
