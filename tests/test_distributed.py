"""distributed=True (docs/distributed.md): gloo processes on the CPU against one process on the
concatenated batch.

One ``torch.multiprocessing`` start of 3 processes (a gloo group of 3, then of 2) runs every case of
``distributed_cases.py`` (unequal local batch sizes, duplicate labels so that the ranks hold
different numbers of terms, both reducers, every loss, dense and chunked); the tests here check
what the workers recorded: the mean over ranks of the loss values equals the single-process
loss, and every parameter gradient after DDP's averaging equals the single-process gradient.
"""

import importlib
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning import reducers

import vse_losses
from tests.support.distributed_cases import case_ids, worker
from vse_losses import MaxViolationLoss, SumHingeLoss
from vse_losses import functional as VF
from vse_losses.functional import Norm, violation_terms
from vse_losses.ops import triton_runs

WORLDS = (3, 2)  # one spawn of 3 processes: the world of 3 first, then ranks 0 and 1 alone
TOL = {"float64": 1e-9, "float32": 2e-5}
CASES = [(world, case) for world in WORLDS for case in case_ids(world)]


def start_method() -> str:
    """``spawn`` re-imports torch and PML in every worker: 3 processes on 2 cores spend ~25 s
    there. ``fork`` (Linux, torch >= 2.11; not once CUDA is initialised here) inherits them; the
    workers use one thread each and no CUDA. VSE_DIST_START=spawn forces spawn."""
    forced = os.environ.get("VSE_DIST_START")
    if forced:
        return forced
    # torch 2.4's forked workers hung in the rendezvous once this process had imported dynamo or
    # run torch.compile (test_compile_autocast); 2.11 and 2.14 fork fine (checked)
    recent = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 11)
    if recent and "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized():
        importlib.import_module("torch._dynamo")  # DistributedDataParallel imports it: once here, not per worker
        return "fork"
    return "spawn"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{world: [record of rank r]}, each record {case: ...}."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    d = tmp_path_factory.mktemp("distributed")
    mp.start_processes(worker, args=(WORLDS, str(d)), nprocs=max(WORLDS), join=True, start_method=start_method())
    out = {}
    for world in WORLDS:
        out[world] = []
        for r in range(world):
            with open(d / f"rank{r}_world{world}.json") as f:
                out[world].append(json.load(f))
    return out


@pytest.mark.parametrize("world,case", CASES, ids=[f"{w}-{c}" for w, c in CASES])
def test_matches_one_process_on_the_concatenated_batch(results, world, case):
    for rank, rec in enumerate(results[world]):
        rec = rec[case]
        assert rec["error"] is None, f"rank {rank}:\n{rec['error']}"
        if case.endswith("wrapper-efficient"):
            continue  # see test_pml_distributed_loss_wrapper
        tol = TOL["float32" if case.endswith("float32") else "float64"]
        assert rec["grad_err"] < tol, rec
        if case.endswith("/wrapper"):
            # PML's wrapper: exact gradients, but every rank returns W × the loss
            assert rec["mean_loss"] == pytest.approx(world * rec["ref_loss"], rel=tol, abs=tol)
        else:
            assert rec["loss_err"] < tol, rec


@pytest.mark.parametrize("world", WORLDS)
def test_pml_distributed_loss_wrapper(results, world):
    """efficient=False is exact up to the factor W on the value (docs/distributed.md);
    efficient=True computes the i2t terms of the local rows only and loses the gradient of the
    other ranks' rows, so it is not the loss of the concatenated batch."""
    rec = results[world][0]["MaxViolationLoss/mean/dup/dense/wrapper-efficient"]
    assert rec["error"] is None, rec["error"]
    assert rec["grad_err"] > 1e-3 or rec["loss_err"] > 1e-3


@pytest.mark.parametrize("world", WORLDS)
def test_ranks_disagreeing_on_labels_raise_on_every_rank(results, world):
    for rec in results[world]:
        assert rec["mismatch"]["error"] is not None and "disagree" in rec["mismatch"]["error"], rec["mismatch"]


@pytest.mark.parametrize("world", WORLDS)
def test_nan_on_one_rank_gives_nan_on_every_rank(results, world):
    for rec in results[world]:
        assert "value" in rec["nan"], rec["nan"]
        assert rec["nan"]["value"] != rec["nan"]["value"]  # NaN
        assert rec["nan"]["grad_is_tensor"]


@pytest.mark.parametrize("world", WORLDS)
def test_gather_rows_unequal_sizes_and_gradient(results, world):
    for rec in results[world]:
        assert rec["gather"]["error"] is None and rec["gather"]["rows_ok"] and rec["gather"]["grad_ok"], rec["gather"]


@pytest.mark.parametrize("world", WORLDS)
def test_collect_stats_are_those_of_the_global_batch(results, world):
    for rec in results[world]:
        rec = rec["stats"]
        assert rec["error"] is None, rec["error"]
        assert rec["dot"] < 1e-12 and rec["lp"] < 1e-12, rec


@pytest.mark.parametrize("world", WORLDS)
def test_other_reducers_get_the_local_terms(results, world):
    for rec in results[world]:
        rec = rec["reducers"]
        assert rec["error"] is None, rec["error"]
        assert rec["terms_err"] < 1e-9 and rec["indices_ok"] and rec["reg_err"] < 1e-9, rec


# ---------------------------------------------------------------------------------------------
# In this process: no process group, world size 1, the query restriction itself
# ---------------------------------------------------------------------------------------------


def test_no_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    for call in (
        lambda: MaxViolationLoss(distributed=True)(x, y),
        lambda: VF.max_violation_loss(x, y, distributed=True),
        lambda: VF.sum_hinge_loss(scores=x @ y.t(), distributed=True),
    ):
        with pytest.raises(ValueError, match="init_process_group"):
            call()
    # building the loss before the group exists is fine: the check is at the call
    MaxViolationLoss(distributed=True)


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "name,kwargs",
    [("SumHingeLoss", {}), ("MaxViolationLoss", {}), ("TopKViolationLoss", {"k": 2}), ("LpViolationLoss", {"p": 3.0})],
)
def test_world_size_one_is_plain_behaviour(world_of_one, name, kwargs):
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    for red in (reducers.MeanReducer(), reducers.SumReducer()):
        cls = getattr(vse_losses, name)
        got = cls(**kwargs, reducer=red, distributed=True)(x, labels, ref_emb=y)
        expected = cls(**kwargs, reducer=red)(x, labels, ref_emb=y)
        assert got.item() == expected.item()
    assert VF.max_violation_loss(x, y, distributed=True).item() == VF.max_violation_loss(x, y).item()
    # scores= works too where there is nothing to gather
    assert VF.sum_hinge_loss(scores=x @ y.t(), distributed=True).item() == VF.sum_hinge_loss(scores=x @ y.t()).item()


def test_indices_tuple_with_distributed_is_an_error(monkeypatch):
    monkeypatch.setattr(vse_losses.distributed, "world_size", lambda: 2)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    idx = (torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="indices_tuple"):
        SumHingeLoss(distributed=True)(x, torch.arange(4), indices_tuple=idx, ref_emb=y)


NORMS = [Norm("sum"), Norm("max"), Norm("topk", k=3), Norm("lp", p=2.5), Norm("mix", mix=0.3)]
# triton, interpreted on the CPU, is slow: its two primitives (the hardest negative, the lp hinge norm)
# and the temperature losses' log-sum-exp
BLOCK_CASES = [(impl, n) for impl in ("dense", "chunked") for n in NORMS] + [("triton", NORMS[1]), ("triton", NORMS[3])]
BLOCK_CASES += [(impl, Norm("lse", temperature=0.3)) for impl in ("dense", "chunked", "triton")]


@pytest.mark.parametrize("impl,norm", BLOCK_CASES, ids=[f"{i}-{n.kind}" for i, n in BLOCK_CASES])
@pytest.mark.parametrize("self_ref", [False, True])
def test_query_blocks_partition_the_terms(impl, norm, self_ref):
    """The terms of the row/column blocks of any partition are the terms of the whole batch:
    what the ranks compute between them, with every impl (triton: on CUDA, or in triton's CPU
    interpreter when TRITON_INTERPRET=1 was set before the kernels were first used)."""
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    if impl == "triton" and not triton_runs(torch.zeros(1, device=device)):
        pytest.skip("triton needs CUDA, or its CPU interpreter (TRITON_INTERPRET=1)")
    dtype = torch.float32 if impl == "triton" else torch.float64
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(9, 6, generator=g, dtype=dtype), dim=1).to(device)
    y = torch.nn.functional.normalize(torch.randn(12, 6, generator=g, dtype=dtype), dim=1).to(device)
    y = None if self_ref else y
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 4, 5, 5], device=device)
    ref_labels = None if self_ref else torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 1, 3], device=device)
    x.requires_grad_(True)
    kw = dict(labels=labels, ref_labels=ref_labels, norm=norm, impl=impl)
    full, _ = violation_terms(x, y, **kw)
    (gx_full,) = torch.autograd.grad(full.sum(), x)
    row_blocks = [(0, 4), (4, 5), (5, 9)]
    col_blocks = row_blocks if self_ref else [(0, 3), (3, 10), (10, 12)]
    total = 0
    for rows, cols in zip(row_blocks, col_blocks):
        terms, anchors = violation_terms(x, y, **kw, query_rows=rows, query_cols=cols)
        assert anchors.min() >= 0 and anchors.max() < max(rows[1] - rows[0], cols[1] - cols[0])
        total = total + terms.sum()
    (gx,) = torch.autograd.grad(total, x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(total, full.sum(), rtol=tol, atol=tol)
    torch.testing.assert_close(gx, gx_full, rtol=tol, atol=tol)
