"""The PML base class shared by every VSE++ ranking loss: call forms, guards, dispatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import DivisorReducer, MeanReducer, SumReducer

from .. import _checks
from .. import distributed as _dist
from ..diagnostics import STATS, score_stats, violation_stats
from ..functional import (
    Norm,
    distributed_terms,
    nan_guard,
    pair_masks,
    resolve_labels,
    smooth_max,
    violation_norm,
    violation_terms,
    violation_terms_from_scores,
)

# the reducers whose calls skip PML's forward (BaseViolationLoss._plain_forward), and what
# each computes from the terms
_PLAIN_REDUCTIONS = {MeanReducer: torch.mean, SumReducer: torch.sum}


class BaseViolationLoss(BaseMetricLossFunction):
    """One loss term per positive pair and direction, a norm of its violation vector (docs/design.md).

    Args:
        margin: α ≥ 0 of the hinge (0.2 in the paper); may be changed between calls (validated).
        directions: ``"both"`` (default), ``"i2t"`` (embeddings as queries) or ``"t2i"``.
        impl: ``"auto"``, ``"dense"``, ``"chunked"`` or ``"triton"``: the same function computed
            three ways; distances other than a dot product/cosine always use ``dense``.
        distributed: negatives from every rank of the initialised ``torch.distributed`` group
            (``vse_losses.distributed``, docs/distributed.md): each rank passes its local batch;
            with ``MeanReducer``, ``SumReducer`` or a ``ThresholdReducer`` (``AvgNonZeroReducer``)
            the mean of the ranks' losses, and DDP's average of the gradients, are exactly those
            of one process on the concatenated batch. World size 1: plain behaviour.
        **kwargs: PML's ``distance`` (default ``CosineSimilarity()``), ``reducer`` (default
            ``MeanReducer()``: the mean over terms; ``SumReducer()`` gives the paper's summed
            loss), ``embedding_regularizer``, ``collect_stats``.

    Call forms:
        ``loss(img_emb, cap_emb)`` — paired, as the VSE++ code: row a of each is a pair;
        ``loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None)`` — PML.
    """

    def __init__(
        self, margin: float = 0.2, directions: str = "both", impl: str = "auto", distributed: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.margin = margin
        self.directions = _checks.check_choice("directions", directions, _checks.DIRECTIONS)
        self.impl = _checks.check_choice("impl", impl, _checks.IMPLS)
        self.distributed = bool(distributed)
        self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)
        self.add_to_recordable_attributes(list_of_names=list(STATS), is_stat=True)

    @property
    def margin(self) -> float:
        return self._margin

    @margin.setter
    def margin(self, value: float) -> None:  # validated when changed between calls too
        self._margin = _checks.check_margin(value)

    def get_default_distance(self):
        return CosineSimilarity()

    def norm(self) -> Norm:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """PML's forward with the paired form and the guards first; the distributed path reduces
        across ranks before PML's reducer sees the loss."""
        labels, ref_emb = _checks.split_paired_call(labels, ref_emb)
        _checks.check_inputs(embeddings, labels, ref_emb, ref_labels)
        if indices_tuple is not None and len(indices_tuple) not in (3, 4):
            raise ValueError(
                "indices_tuple must be PML triplets (a, p, n) or pairs (a1, p, a2, n), "
                f"got {len(indices_tuple)} tensors"
            )
        if ref_emb is None and labels is None and indices_tuple is None:
            raise ValueError(
                "one modality needs labels: call loss(embeddings, labels), or the paired form loss(img_emb, cap_emb)"
            )
        if isinstance(self.reducer, DivisorReducer):  # PML's own error would be KeyError: 'divisor'
            raise ValueError(
                "DivisorReducer divides by a 'divisor' that the loss must provide; these losses give none "
                "(one term per positive pair and direction): use MeanReducer (the mean over the terms) or "
                "SumReducer (the original VSE++ code's sum)"
            )
        if ref_emb is None:
            ref_emb, ref_labels = embeddings, labels
        if self.distributed and _dist.world_size() > 1:  # ValueError without a process group
            return self._forward_distributed(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if indices_tuple is None:
            reduce = self._plain_reduction()
            if reduce is not None:
                return self._plain_forward(embeddings, labels, ref_emb, ref_labels, reduce)
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _plain_reduction(self):
        """``torch.mean`` or ``torch.sum`` where the loss is the mean (``MeanReducer``) or the sum
        (``SumReducer``) of the terms of a dot product or cosine, nothing is recorded or added, and
        ``compute_loss`` is this class's (what :meth:`_plain_forward` computes), else None."""
        reducer = self.reducer
        reduce = _PLAIN_REDUCTIONS.get(type(reducer))
        if reduce is None or self.collect_stats or reducer.collect_stats or self.embedding_regularizer is not None:
            return None
        if type(self).compute_loss is not BaseViolationLoss.compute_loss:  # a subclass's own terms
            return None
        return reduce if self._dot() else None

    def _plain_forward(self, embeddings, labels, ref_emb, ref_labels, reduce):
        """PML's forward (without mined tuples) with a plain reducer (:meth:`_plain_reduction`): what
        :meth:`compute_loss` and the reducer give, without the loss dict, the terms' anchors and the
        reducer's dispatch (at the batch sizes most people train with, a call is bound by such
        fixed costs)."""
        self.reset_stats()
        y_in = None if ref_emb is embeddings else ref_emb
        x, y, cosine = self._dot_inputs(embeddings, y_in)
        terms, _ = self._violation_terms(x, y, labels, ref_labels, cosine, anchors=False, guard="sum")
        if terms.numel() == 0:
            return self._no_terms(embeddings, y_in)["losses"]
        return reduce(terms)

    def _violation_terms(self, x, y, labels, ref_labels, cosine, anchors=True, guard=True):
        """The planner's terms (and anchors) of x against y with this loss's options, NaN-guarded
        (``guard``: every term, or with ``"sum"`` their sum: :func:`~vse_losses.planner.violation_terms`)."""
        return violation_terms(
            x,
            y,
            labels=labels,
            ref_labels=ref_labels,
            margin=self.margin,
            norm=self.norm(),
            directions=self.directions,
            impl=self.impl,
            cosine=cosine,
            guard=guard,
            anchors=anchors,
        )

    def _dot_inputs(self, embeddings, ref_emb):
        """``(x, y, cosine)`` for the planner: PML's cosine (l2 normalisation, then the dot product)
        is left to it, which can fold the norms into the kernels instead of normalising copies."""
        distance = self.distance
        if distance.normalize_embeddings and distance.p == 2:
            return embeddings, ref_emb, True
        y = None if ref_emb is None else distance.maybe_normalize(ref_emb)
        return distance.maybe_normalize(embeddings), y, False

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        self_ref = ref_emb is embeddings
        y_in = None if self_ref else ref_emb
        if self._dot() and indices_tuple is None:
            x, y, cosine = self._dot_inputs(embeddings, y_in)
            terms, anchors = self._violation_terms(x, y, labels, ref_labels, cosine)
            if self.collect_stats:
                if cosine:
                    x = F.normalize(x, dim=1)
                    y = None if y is None else F.normalize(y, dim=1)
                self._set_stats(
                    violation_stats(x, x if y is None else y, labels, ref_labels, self_ref, terms, self.directions)
                )
        else:
            terms, anchors = self._dense_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels, self_ref)
            terms = terms + nan_guard(embeddings, y_in)
        if terms.numel() == 0:
            return {"loss": self._no_terms(embeddings, y_in)}
        return {"loss": {"losses": terms, "indices": anchors, "reduction_type": "element"}}

    @staticmethod
    def _no_terms(embeddings, ref_emb):
        """No positive pair in the batch: a 0 (as PML's losses give), not the NaN of a mean over no
        terms, tied to both inputs so that every reducer returns it with zero gradients."""
        zero = nan_guard(embeddings, ref_emb) + 0.0  # + 0.0 turns the −0 of a negative sum into 0
        return {"losses": zero, "indices": None, "reduction_type": "already_reduced"}

    def _forward_distributed(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """The local queries against every rank's batch (``vse_losses.distributed``), reduced so
        that the ranks' losses sum to W × the single-process loss."""
        if indices_tuple is not None:
            raise ValueError(
                "distributed=True builds the pairs from labels over the global batch, but indices_tuple "
                "indexes this rank's batch only: drop indices_tuple, or use distributed=False"
            )
        self.reset_stats()
        self_ref = ref_emb is embeddings
        x, y = embeddings, (None if self_ref else ref_emb)
        dot = self._dot()
        if dot:  # normalise locally, row by row, before gathering
            x = self.distance.maybe_normalize(x)
            y = None if self_ref else self.distance.maybe_normalize(y)
        terms, anchors, g = distributed_terms(
            x,
            y,
            labels,
            None if self_ref else ref_labels,
            margin=self.margin,
            norm=self.norm(),
            directions=self.directions,
            impl=self.impl,
            scores=None if dot else self._scores,
        )
        if self.collect_stats:
            gy = g.x if g.y is None else g.y
            if dot:
                self._set_stats(
                    violation_stats(
                        g.x,
                        gy,
                        g.labels if g.has_labels else None,
                        g.ref_labels if g.has_labels else None,
                        self_ref,
                        terms,
                        self.directions,
                    )
                )
            else:
                pos, neg = pair_masks(g.labels, g.ref_labels, self_ref)
                self._set_stats(score_stats(self._scores(g.x, gy), pos, neg, terms, self.directions))
        rule = _dist.reducer_rule(self.reducer)
        if rule is not None:
            loss = {
                "losses": _dist.reduce_terms(terms, rule, g.world),
                "indices": None,
                "reduction_type": "already_reduced",
            }
        elif terms.numel() == 0:
            loss = self._no_terms(embeddings, None if self_ref else ref_emb)
        else:  # another reducer gets this rank's terms; indices: the local index of each term's
            # query (the embeddings row for i2t terms, the ref_emb row for t2i terms)
            loss = {"losses": terms + g.guard(), "indices": anchors, "reduction_type": "element"}
        loss_dict = {"loss": loss}
        self.add_embedding_regularization_to_loss_dict(loss_dict, embeddings)
        out = self.reducer(loss_dict, embeddings, labels)
        # the guard keeps every rank's loss on the gather, so that every rank joins its backward
        return out + g.guard() if torch.is_tensor(out) else out

    # ----------------------------------------------------------------------------------------

    def _dot(self) -> bool:
        """The similarity is a (possibly normalised) dot product, which the fast paths compute."""
        return isinstance(self.distance, DotProductSimilarity) and self.distance.power == 1

    def _set_stats(self, stats) -> None:
        for name, value in stats.items():
            setattr(self, name, value)

    def _scores(self, embeddings, ref_emb) -> torch.Tensor:
        """(B, M) similarities from the PML distance (a distance d becomes −d)."""
        wide = torch.promote_types(embeddings.dtype, torch.float32)
        mat = self.distance(embeddings.to(wide), ref_emb.to(wide))
        return mat if self.distance.is_inverted else -mat

    def _dense_terms(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, self_ref):
        norm = self.norm()
        S = self._scores(embeddings, ref_emb)
        B, M = S.shape
        if indices_tuple is None:
            lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, S.device)
            pos, neg = pair_masks(lab, ref_lab, self_ref)
        elif len(indices_tuple) == 4:
            a1, p, a2, n = (i.to(S.device) for i in indices_tuple)
            pos = torch.zeros(B, M, dtype=torch.bool, device=S.device)
            neg = torch.zeros_like(pos)
            pos[a1, p] = True
            neg[a2, n] = True
        else:
            return self._triplet_terms(S, indices_tuple, norm)
        terms, anchors = violation_terms_from_scores(
            S, pos, neg, margin=self.margin, norm=norm, directions=self.directions
        )
        if self.collect_stats:
            self._set_stats(score_stats(S, pos, neg, terms, self.directions))
        return terms, anchors

    def _triplet_terms(self, S, indices_tuple, norm) -> tuple[torch.Tensor, torch.Tensor]:
        """Triplets (a, p, n) index ``embeddings`` for a and ``ref_emb`` for p and n, so they define
        the anchor→ref direction only: one term per distinct (a, p), over its listed negatives."""
        if self.directions == "t2i":
            raise ValueError(
                "triplet indices_tuple define the anchor→ref direction only; use directions='i2t' or 'both', "
                "or swap embeddings and ref_emb for t2i"
            )
        a, p, n = (i.to(S.device).long() for i in indices_tuple)
        if a.numel() == 0:
            return S.new_zeros(0), a
        v = self.margin - S[a, p] + S[a, n]
        h = v if norm.smooth else F.relu(v)
        key = a * S.shape[1] + p
        uniq, group = torch.unique(key, return_inverse=True)
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=uniq.numel())
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(group)
        slot[order] = torch.arange(group.numel(), device=S.device) - starts[group[order]]
        # padding: 0 changes no norm of h ≥ 0; −∞ adds nothing to a log-sum-exp
        H = h.new_full((uniq.numel(), int(counts.max())), float("-inf") if norm.smooth else 0.0)
        H = H.index_put((group, slot), h)
        return (smooth_max(H, norm) if norm.smooth else violation_norm(H, norm)), uniq // S.shape[1]
