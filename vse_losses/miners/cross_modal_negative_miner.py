"""Cross-modal miners: the k hardest negatives of every positive pair, as PML triplets."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.miners import BaseMiner

from .. import _checks
from ..ops import CHUNKED, checked_backend, kernel_config, resolve_backend
from ..ops.topk import topk_lowest
from ..pairs import positive_pairs, resolve_labels


class TopKNegativeMiner(BaseMiner):
    """For every positive pair (a, p), the ``k`` hardest negatives n of the anchor's row.

    Returns PML triplets ``(a, p, n)``: ``a`` indexes ``embeddings``, ``p`` and ``n`` index
    ``ref_emb`` (the anchor→ref direction, image→caption in ``miner(img, ids, cap, ids)``;
    swap the arguments for caption→image). Without labels, row a pairs with ``ref_emb`` row a.
    Same-label items are never negatives, and with one modality an item never pairs with itself.
    Fewer than k negatives give fewer triplets. Usable with any PML loss taking triplets;
    ``SumHingeLoss`` on these triplets is ``TopKViolationLoss(k)`` in the anchor→ref direction.

    Args:
        k: negatives per positive pair, an integer ≥ 1.
        impl: ``"auto"``, ``"dense"``, ``"chunked"`` or ``"triton"`` for dot/cosine distances
            (the chunked and triton searches never build the B×M matrix).
        **kwargs: PML's ``distance`` (default ``CosineSimilarity()``), ``collect_stats``.
    """

    def __init__(self, k: int = 1, impl: str = "auto", **kwargs):
        self.k = _checks.check_k(k)
        self.impl = _checks.check_choice("impl", impl, _checks.IMPLS)
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(list_of_names=["k"], is_stat=False)

    def get_default_distance(self):
        return CosineSimilarity()

    def forward(self, embeddings, labels=None, ref_emb=None, ref_labels=None):
        """PML's miner call; also the paired form ``miner(img_emb, cap_emb)`` (labels optional)."""
        labels, ref_emb = _checks.split_paired_call(labels, ref_emb, caller="miner")
        _checks.check_inputs(embeddings, labels, ref_emb, ref_labels)
        self.reset_stats()
        with torch.no_grad():
            if ref_emb is None:
                if labels is None:
                    raise ValueError("one modality needs labels: call miner(embeddings, labels)")
                ref_emb, ref_labels = embeddings, labels
            mining_output = self.mine(embeddings, labels, ref_emb, ref_labels)
        self.output_assertion(mining_output)
        return mining_output

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        self_ref = ref_emb is embeddings
        B, M = embeddings.shape[0], ref_emb.shape[0]
        lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, embeddings.device)
        a, p = positive_pairs(lab, ref_lab, self_ref)
        if isinstance(self.distance, DotProductSimilarity) and self.distance.power == 1:
            x = self.distance.maybe_normalize(embeddings)
            y = self.distance.maybe_normalize(ref_emb)
            backend = resolve_backend(self.impl, x, B * M, y=y)
            backend = CHUNKED if backend.dense else backend  # the search is the same at any size

            def search(b):
                return b.negative_topk(x, y, lab, ref_lab, self_ref, self.k)

            config = kernel_config("negative_topk", x, y, self_ref, self.k)
            vals, idx, _, _ = search(checked_backend(self.impl, backend, config, search, x.device))
        else:
            vals, idx = self._dense_topk(embeddings, ref_emb, lab, ref_lab, self_ref)
        vals, idx = vals[a], idx[a]  # (P, k)
        valid = vals != float("-inf")
        n_per_pair = valid.sum(1)
        anchors = torch.repeat_interleave(a, n_per_pair)
        positives = torch.repeat_interleave(p, n_per_pair)
        return anchors, positives, idx[valid]

    def _dense_topk(self, embeddings, ref_emb, lab, ref_lab, self_ref):
        mat = self.distance(embeddings, ref_emb)
        S = (mat if self.distance.is_inverted else -mat).float()
        neg = lab[:, None] != ref_lab[None, :]
        if self_ref:
            neg &= ~torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
        S = S.masked_fill(~neg, float("-inf"))
        k = min(self.k, S.shape[1])
        return topk_lowest(S, k, dim=1)  # ties to the lowest index, as the fused search


class HardestNegativeMiner(TopKNegativeMiner):
    """For every positive pair (a, p), the hardest negative of the anchor's row (VSE++'s max
    violation as a miner): ``TopKNegativeMiner(k=1)``."""

    def __init__(self, **kwargs):
        if "k" in kwargs:
            raise ValueError("HardestNegativeMiner always mines k=1; use TopKNegativeMiner(k=...)")
        super().__init__(k=1, **kwargs)
