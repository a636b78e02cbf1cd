"""The cases of tests/test_distributed.py, run inside gloo worker processes.

Every rank builds the same global batch (deterministic from a seed), computes the single-process
reference on the concatenated batch itself, then the distributed loss on its own slice, and
records for each case the difference between

- the mean over ranks of the loss values and the single-process loss, and
- every parameter gradient after DDP's averaging (all-reduce, divide by W) and the
  single-process gradient,

into ``{out_dir}/rank{r}_world{w}.json``. A case that raises records the error instead (every rank
raises the same way in these cases, so the collectives stay in step).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from pytorch_metric_learning import distances, reducers
from pytorch_metric_learning.regularizers import LpRegularizer
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

import vse_losses
from vse_losses import functional as VF
from vse_losses.distributed import gather_rows

LOSSES = {
    "SumHingeLoss": {},
    "MaxViolationLoss": {},
    "TopKViolationLoss": {"k": 3},
    "LpViolationLoss": {"p": 2.5},
    "MixedViolationLoss": {"mix": 0.3},
    "LogSumExpViolationLoss": {"temperature": 0.1},
    "InfoNCELoss": {"temperature": 0.1},
}
REDUCERS = {"mean": reducers.MeanReducer, "sum": reducers.SumReducer, "avgnz": reducers.AvgNonZeroReducer}
# rows per rank: unequal on purpose (one rank of world 3 holds a single pair)
IMG_SIZES = {2: [5, 3], 3: [4, 1, 3]}
CAP_SIZES = {2: [7, 4], 3: [6, 2, 5]}  # the cross-modal form: captions per rank ≠ images per rank
D_IMG, D_CAP, D = 6, 5, 8


def case_ids(world: int) -> list:
    """Every case of one world size as a string ``loss/reducer/form/impl[/extra]``."""
    ids = []
    for name in LOSSES:
        for red in ("mean", "sum"):
            for form in ("paired", "dup"):
                for impl in ("dense", "chunked"):
                    ids.append(f"{name}/{red}/{form}/{impl}")
    for name in ("SumHingeLoss", "MaxViolationLoss", "LpViolationLoss", "InfoNCELoss"):
        for impl in ("dense", "chunked"):
            ids.append(f"{name}/mean/xmodal/{impl}")
            ids.append(f"{name}/sum/selfref/{impl}")
    for name in ("SumHingeLoss", "MaxViolationLoss"):
        ids.append(f"{name}/avgnz/dup/chunked")
        ids.append(f"{name}/mean/dup/dense/lpdistance")
        ids.append(f"{name}/mean/dup/chunked/float32")
        ids.append(f"{name}/mean/selfref/chunked/lonely")  # a rank whose rows have no positive pair
    ids += [
        "max_violation_loss/mean/dup/chunked/functional",
        "max_violation_loss/sum/paired/dense/functional",
        "sum_hinge_loss/mean/xmodal/chunked/functional",
        "lp_violation_loss/mean/paired/chunked/functional",
        "info_nce_loss/mean/dup/chunked/functional",
        "MaxViolationLoss/mean/paired/chunked/wrapper",
        "SumHingeLoss/sum/dup/dense/wrapper",
        "MaxViolationLoss/mean/dup/dense/wrapper-efficient",
    ]
    if world == 2:
        # the real DistributedDataParallel (its first use imports torch._dynamo: seconds, so once)
        ids += ["MaxViolationLoss/mean/dup/chunked/ddp", "SumHingeLoss/sum/paired/chunked/ddp"]
    return ids


# --------------------------------------------------------------------------------------------


class TwoTowers(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.img = torch.nn.Linear(D_IMG, D, dtype=dtype)
        self.cap = torch.nn.Linear(D_CAP, D, dtype=dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))

    def forward(self, img, cap):
        return self.img(img), self.cap(cap)


def global_batch(world: int, form: str, dtype, extra: str):
    """Inputs and labels of the concatenated batch, and each rank's rows ``(img, cap)`` ranges."""
    g = torch.Generator().manual_seed(100 + world)
    b_sizes = IMG_SIZES[world] if not extra.startswith("wrapper") else [3] * world  # PML's wrapper needs equal sizes
    m_sizes = CAP_SIZES[world] if form == "xmodal" else b_sizes
    N, M = sum(b_sizes), sum(m_sizes)
    img = torch.randn(N, D_IMG, generator=g, dtype=dtype)
    cap = torch.randn(M, D_CAP, generator=g, dtype=dtype)
    labels = cap_labels = None
    if form == "dup" or form == "selfref":
        # few labels: duplicates within and across ranks, so term counts differ between ranks
        labels = torch.randint(0, max(2, N // 2), (N,), generator=g)
        if extra == "lonely":
            labels = torch.arange(N)
            labels[: b_sizes[0]] = torch.tensor([0, 0, 1, 1, 2][: b_sizes[0]])  # only rank 0 has pairs
        cap_labels = labels
    elif form == "xmodal":
        labels = torch.arange(N)  # image ids
        cap_labels = torch.randint(0, N, (M,), generator=g)  # the image of each caption
    rows = [(sum(b_sizes[:r]), sum(b_sizes[: r + 1])) for r in range(world)]
    cols = [(sum(m_sizes[:r]), sum(m_sizes[: r + 1])) for r in range(world)]
    return img, cap, labels, cap_labels, rows, cols


def call(loss_fn, form, img_emb, cap_emb, labels, cap_labels):
    if form == "paired":
        return loss_fn(img_emb, cap_emb)
    if form == "dup":
        return loss_fn(img_emb, labels, ref_emb=cap_emb)
    if form == "xmodal":
        return loss_fn(img_emb, labels, ref_emb=cap_emb, ref_labels=cap_labels)
    if form == "selfref":
        return loss_fn(img_emb, labels)
    raise ValueError(form)


def call_functional(name, form, img_emb, cap_emb, labels, cap_labels, red, impl, distributed):
    fn = getattr(VF, name)
    kw = dict(reduction=red, impl=impl, distributed=distributed)
    if name == "lp_violation_loss":
        kw["p"] = 2.5
    if name == "info_nce_loss":
        kw["temperature"] = 0.1
    if form == "paired":
        return fn(img_emb, cap_emb, **kw)
    if form == "dup":
        return fn(img_emb, cap_emb, labels=labels, **kw)
    return fn(img_emb, cap_emb, labels=labels, ref_labels=cap_labels, **kw)


def make_loss(name, red, impl, extra, distributed):
    kw = dict(LOSSES[name], reducer=REDUCERS[red](), impl=impl)
    if extra == "lpdistance":
        kw["distance"] = distances.LpDistance()
    if extra.startswith("wrapper"):
        return vse_losses.__dict__[name](**kw)
    return vse_losses.__dict__[name](**kw, distributed=distributed)


def run_case(case: str, world: int, rank: int) -> dict:
    parts = case.split("/")
    name, red, form, impl = parts[:4]
    extra = parts[4] if len(parts) > 4 else ""
    dtype = torch.float32 if extra == "float32" else torch.float64
    img, cap, labels, cap_labels, rows, cols = global_batch(world, form, dtype, extra)
    functional = extra == "functional"

    def loss_of(model, img_in, cap_in, lab, cap_lab, distributed):
        img_emb, cap_emb = model(img_in, cap_in)
        if functional:
            return call_functional(name, form, img_emb, cap_emb, lab, cap_lab, red, impl, distributed)
        loss_fn = make_loss(name, red, impl, extra, distributed)
        if distributed and extra.startswith("wrapper"):
            loss_fn = DistributedLossWrapper(loss_fn, efficient=extra == "wrapper-efficient")
            if form == "dup" and extra == "wrapper-efficient":
                return loss_fn(img_emb, lab, ref_emb=cap_emb, ref_labels=cap_lab)
        return call(loss_fn, form, img_emb, cap_emb, lab, cap_lab)

    # the single-process reference on the concatenated batch
    ref_model = TwoTowers(dtype)
    ref_loss = loss_of(ref_model, img, cap, labels, cap_labels, False)
    ref_loss.backward()
    ref_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in ref_model.parameters()]

    # this rank's slice
    (r0, r1), (c0, c1) = rows[rank], cols[rank]
    lab = None if labels is None else labels[r0:r1]
    cap_lab = None if cap_labels is None else cap_labels[c0:c1]
    model = TwoTowers(dtype)
    if extra == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    loss = loss_of(model, img[r0:r1], cap[c0:c1], lab, cap_lab, True)
    loss.backward()
    grads = []
    for p in model.parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad.clone()  # one modality: no caption tower
        if extra != "ddp":  # DDP's averaging, by hand
            dist.all_reduce(g)
            g /= world
        grads.append(g)
    values = torch.tensor([loss.item()], dtype=torch.float64)
    dist.all_reduce(values)
    mean_loss = values.item() / world
    scale = max(1.0, max(float(g.abs().max()) for g in ref_grads))
    return {
        "ref_loss": ref_loss.item(),
        "mean_loss": mean_loss,
        "loss_err": abs(mean_loss - ref_loss.item()) / max(1.0, abs(ref_loss.item())),
        "grad_err": max(float((g - r).abs().max()) for g, r in zip(grads, ref_grads)) / scale,
        "grad_norm": scale,
        "error": None,
    }


def mismatch_case(world: int, rank: int) -> dict:
    """Rank 0 passes labels, the others do not: a ValueError on every rank."""
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    try:
        vse_losses.MaxViolationLoss(distributed=True)(x, torch.arange(3) if rank == 0 else None, ref_emb=y)
    except ValueError as e:
        return {"error": str(e)}
    return {"error": None}


def nan_case(world: int, rank: int) -> dict:
    """NaN in one rank's input: every rank's loss is NaN (as one process on the whole batch)."""
    x, y = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    x2 = x.clone()
    if rank == world - 1:
        x2 = torch.where(torch.arange(3)[:, None] == 1, torch.full_like(x2, float("nan")), x2)
    loss = vse_losses.MaxViolationLoss(distributed=True)(x2, y)
    loss.backward()
    return {"value": float(loss), "grad_is_tensor": x.grad is not None}


def reducers_case(world: int, rank: int) -> dict:
    """Reducers without an exact distributed rule get this rank's terms: with DoNothingReducer
    the ranks' terms are, between them, every term of the concatenated batch; an embedding
    regulariser stays per rank (PML's semantics under DDP)."""
    img, cap, labels, _, rows, _ = global_batch(world, "dup", torch.float64, "")
    (r0, r1) = rows[rank]
    x = img[:, :4].clone().requires_grad_(True)
    y = cap[:, :4]
    ref = vse_losses.TopKViolationLoss(k=2, reducer=reducers.SumReducer())(x, labels, ref_emb=y)
    local = x[r0:r1].detach().clone().requires_grad_(True)
    out = vse_losses.TopKViolationLoss(k=2, reducer=reducers.DoNothingReducer(), distributed=True)(
        local, labels[r0:r1], ref_emb=y[r0:r1]
    )
    terms = out["loss"]["losses"]
    indices_ok = bool(((out["loss"]["indices"] >= 0) & (out["loss"]["indices"] < r1 - r0)).all())
    terms.sum().backward()  # every rank joins the gather's backward
    total = terms.detach().sum().reshape(1)
    dist.all_reduce(total)
    plain = vse_losses.SumHingeLoss(distributed=True)(local, labels[r0:r1], ref_emb=y[r0:r1])
    with_reg = vse_losses.SumHingeLoss(distributed=True, embedding_regularizer=LpRegularizer())(
        local, labels[r0:r1], ref_emb=y[r0:r1]
    )
    reg_local = LpRegularizer()(local)
    return {
        "terms_err": abs(total.item() - ref.item()) / max(1.0, abs(ref.item())),
        "indices_ok": indices_ok,
        "reg_err": abs(with_reg.item() - plain.item() - reg_local.item()),
        "error": None,
    }


def gather_case(world: int, rank: int) -> dict:
    """gather_rows with unequal sizes: the rows of every rank in order, and the gradient of
    Σ_r loss_r(gathered) in each rank's own rows."""
    sizes = IMG_SIZES[world]
    full = torch.arange(sum(sizes) * 2, dtype=torch.float64).reshape(-1, 2)
    r0 = sum(sizes[:rank])
    local = full[r0 : r0 + sizes[rank]].clone().requires_grad_(True)
    gathered = gather_rows(local)
    weights = torch.arange(full.shape[0], dtype=torch.float64)[:, None] * (rank + 1)
    (gathered * weights).sum().backward()  # Σ over ranks of the weights: world·(world+1)/2 · index
    expected = torch.arange(full.shape[0], dtype=torch.float64)[r0 : r0 + sizes[rank], None] * world * (world + 1) / 2
    return {
        "rows_ok": bool(torch.equal(gathered.detach(), full)),
        "grad_ok": bool(torch.equal(local.grad, expected.expand_as(local))),
        "error": None,
    }


def stats_case(world: int, rank: int) -> dict:
    """collect_stats=True: the diagnostics of the global batch on every rank (dot and other
    distances), as one process on the concatenated batch records them."""
    img, cap, labels, _, rows, _ = global_batch(world, "dup", torch.float64, "")
    (r0, r1) = rows[rank]
    x, y = img[:, :4], cap[:, :4]
    out = {"error": None}
    for name, kw in (("dot", {}), ("lp", {"distance": distances.LpDistance()})):
        ref_fn = vse_losses.MaxViolationLoss(collect_stats=True, **kw)
        ref_fn(x, labels, ref_emb=y)
        fn = vse_losses.MaxViolationLoss(collect_stats=True, distributed=True, **kw)
        fn(x[r0:r1], labels[r0:r1], ref_emb=y[r0:r1])
        out[name] = max(abs(getattr(fn, s) - getattr(ref_fn, s)) for s in ("pos_sim_mean", "hardest_neg_sim_mean"))
    return out


def worker(rank: int, worlds: tuple, out_dir: str) -> None:
    """One spawned process: for each world size (largest first) ranks below it form a fresh
    gloo group, run every case and write ``rank{r}_world{w}.json``; the others are done."""
    torch.set_num_threads(1)
    for world in worlds:
        if rank >= world:
            return
        init = os.path.join(out_dir, f"init{world}")
        dist.init_process_group(
            "gloo", init_method=f"file://{init}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        results = {}
        try:
            for case in case_ids(world):
                if os.environ.get("VSE_DIST_DEBUG"):
                    print(f"{time.time():.2f}", rank, world, case, flush=True)
                try:
                    results[case] = run_case(case, world, rank)
                except Exception:  # recorded, reported by the test of this case
                    results[case] = {"error": traceback.format_exc()}
            for name, fn in (
                ("mismatch", mismatch_case),
                ("nan", nan_case),
                ("reducers", reducers_case),
                ("gather", gather_case),
                ("stats", stats_case),
            ):
                try:
                    results[name] = fn(world, rank)
                except Exception:
                    results[name] = {"error": traceback.format_exc()}
        finally:
            with open(os.path.join(out_dir, f"rank{rank}_world{world}.json"), "w") as f:
                json.dump(results, f)
            # all ranks leave together, and a rank leaving for good exits without tearing the
            # group down: torch 2.4's gloo hung in destroy_process_group now and then otherwise
            dist.barrier()
            if not any(rank < w for w in worlds[worlds.index(world) + 1 :]):
                os._exit(0)
            dist.destroy_process_group()
