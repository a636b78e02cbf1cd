"""The cost of ``distributed=True``'s gather against the loss itself, gloo processes on the CPU.

    python benchmarks/bench_distributed.py                       # worlds 2,3,4; B_local 256,1024
    python benchmarks/bench_distributed.py --worlds 2 --local 512 --dim 256 --losses MH,SH --rounds 5
    pytest benchmarks/bench_distributed.py --benchmark-only      # one small pytest-benchmark row

Every rank (one thread each) holds ``B_local`` image and caption embeddings (``D`` dims, float32)
and times, as the median over rounds of the slowest rank (each round starts at a barrier):

- ``gather``: :func:`vse_losses.distributed.gather_batch` forward and backward alone (the
  collectives: sizes, labels, both modalities in one all-gather; the backward's all-reduce);
- ``loss``: the loss with ``distributed=True``, forward and backward (gather included), each rank
  scoring its ``B_local`` queries against the ``W·B_local`` global batch in both directions;
- ``local``: the same loss on the rank's batch only (``distributed=False``: negatives from
  ``B_local`` items, the baseline without global negatives);
- ``single``: one process, one thread, on the whole ``W·B_local`` batch (the work that the ranks
  share).

``gather %`` = gather / loss. A second table times the compute alone, in one process (one thread,
no communication): one rank's two query blocks against one process on the whole batch; its
ratio tends to 2/W (each rank scores B·N pairs per direction, one process N² for both).

Processes are started by fork where available (``--start spawn``
otherwise); with more processes than cores (4 on a 2-core machine) the ranks time-share the cores
and the collectives wait for descheduled peers: read those rows as an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import vse_losses  # noqa: E402
from vse_losses.distributed import gather_batch  # noqa: E402

LOSSES = {
    "SH": ("SumHingeLoss", {}),
    "MH": ("MaxViolationLoss", {}),
    "TopK5": ("TopKViolationLoss", {"k": 5}),
    "Lp2": ("LpViolationLoss", {"p": 2.0}),
    "Mix0.5": ("MixedViolationLoss", {"mix": 0.5}),
}


def _timed(fn, rounds: int) -> list:
    fn()  # warm-up
    out = []
    for _ in range(rounds):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _worker(rank: int, world: int, out_dir: str, configs: list, rounds: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.join(out_dir, 'init')}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    results = []
    try:
        for cfg in configs:
            B, D, loss_name, impl = cfg["B"], cfg["D"], cfg["loss"], cfg["impl"]
            g = torch.Generator().manual_seed(rank)
            x = torch.randn(B, D, generator=g).requires_grad_(True)
            y = torch.randn(B, D, generator=g).requires_grad_(True)
            cls, kw = LOSSES[loss_name]
            dist_loss = getattr(vse_losses, cls)(**kw, impl=impl, distributed=True)
            local_loss = getattr(vse_losses, cls)(**kw, impl=impl)

            def gather(x=x, y=y):
                gb = gather_batch(x, y, None, None)
                (gb.x.sum() + gb.y.sum()).backward()

            def loss(x=x, y=y, dist_loss=dist_loss):
                dist_loss(x, y).backward()

            def local(x=x, y=y, local_loss=local_loss):
                local_loss(x, y).backward()

            row = {"gather": _timed(gather, rounds), "loss": _timed(loss, rounds), "local": _timed(local, rounds)}
            if rank == 0 and cfg.get("single", True):
                X = torch.randn(world * B, D).requires_grad_(True)
                Y = torch.randn(world * B, D).requires_grad_(True)
                row["single"] = []
                local_loss(X, Y).backward()
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    local_loss(X, Y).backward()
                    row["single"].append(time.perf_counter() - t0)
            dist.barrier()
            results.append(row)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


def start_method(requested: str | None = None) -> str:
    if requested:
        return requested
    return "fork" if "fork" in mp.get_all_start_methods() and not torch.cuda.is_initialized() else "spawn"


def measure(world: int, configs: list, rounds: int = 5, start: str | None = None) -> list:
    """Run every config at one world size; one result dict (milliseconds) per config."""
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(
            _worker, args=(world, d, configs, rounds), nprocs=world, join=True, start_method=start_method(start)
        )
        per_rank = []
        for r in range(world):
            with open(os.path.join(d, f"rank{r}.json")) as f:
                per_rank.append(json.load(f))
    rows = []
    for i, cfg in enumerate(configs):
        row = dict(cfg, world=world, N=world * cfg["B"])
        for key in ("gather", "loss", "local"):
            # each round: the slowest rank; then the median over rounds
            slowest = [max(per_rank[r][i][key][k] for r in range(world)) for k in range(rounds)]
            row[key + "_ms"] = 1e3 * statistics.median(slowest)
        if "single" in per_rank[0][i]:
            row["single_ms"] = 1e3 * statistics.median(per_rank[0][i]["single"])
        row["gather_pct"] = 100.0 * row["gather_ms"] / row["loss_ms"]
        rows.append(row)
    return rows


def block_share(world: int, B: int, D: int, loss: str, impl: str, rounds: int = 5) -> dict:
    """In this process, one thread, no communication: one rank's two blocks of queries (its B
    rows against the N = W·B columns, its B columns against the N rows) against the whole
    N × N problem of one process, forward and backward. The ratio tends to 2/W."""
    from vse_losses.functional import Norm, violation_terms

    torch.set_num_threads(1)
    cls, kw = LOSSES[loss]
    norm = Norm(
        **{
            "SumHingeLoss": {"kind": "sum"},
            "MaxViolationLoss": {"kind": "max"},
            "TopKViolationLoss": {"kind": "topk", **kw},
            "LpViolationLoss": {"kind": "lp", **kw},
            "MixedViolationLoss": {"kind": "mix", **kw},
        }[cls]
    )
    N = world * B
    x = torch.nn.functional.normalize(torch.randn(N, D), dim=1).requires_grad_(True)
    y = torch.nn.functional.normalize(torch.randn(N, D), dim=1).requires_grad_(True)
    lab = torch.arange(N)

    def run(q=None):
        violation_terms(x, y, labels=lab, norm=norm, impl=impl, query_rows=q, query_cols=q)[0].sum().backward()

    def med(fn):
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)

    full = med(run)
    rank = med(lambda: run((0, B)))
    return {"world": world, "B": B, "N": N, "D": D, "loss": loss, "impl": impl, "full_ms": full, "rank_ms": rank}


def block_table(rows: list) -> str:
    lines = [
        "| W | B_local | N | D | loss | impl | one rank's blocks ms | one process on N ms | ratio | 2/W |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['B']} | {r['N']} | {r['D']} | {r['loss']} | {r['impl']} "
            f"| {r['rank_ms']:.1f} | {r['full_ms']:.1f} | {r['rank_ms'] / r['full_ms']:.2f} | {2 / r['world']:.2f} |"
        )
    return "\n".join(lines)


def table(rows: list) -> str:
    head = (
        "| W | B_local | N | D | loss | impl | gather ms | loss ms (distributed) | gather % | local-only ms "
        "| one process on N ms |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        single = f"{r['single_ms']:.1f}" if "single_ms" in r else "—"
        lines.append(
            f"| {r['world']} | {r['B']} | {r['N']} | {r['D']} | {r['loss']} | {r['impl']} | {r['gather_ms']:.2f} "
            f"| {r['loss_ms']:.1f} | {r['gather_pct']:.0f} % | {r['local_ms']:.1f} | {single} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="2,3,4")
    ap.add_argument("--local", default="256,1024", help="local batch sizes B_local")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--losses", default="MH,SH")
    ap.add_argument("--impls", default="chunked")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--start", choices=["fork", "spawn", "forkserver"], default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    configs = [
        {"B": B, "D": args.dim, "loss": loss, "impl": impl}
        for B in (int(s) for s in args.local.split(","))
        for loss in args.losses.split(",")
        for impl in args.impls.split(",")
    ]
    rows = []
    for world in (int(s) for s in args.worlds.split(",")):
        rows += measure(world, configs, args.rounds, args.start)
    print(
        f"# {date.today().isoformat()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, gloo, 1 thread per rank, float32, forward+backward, median of {args.rounds}"
    )
    print(table(rows))
    blocks = [
        block_share(int(w), c["B"], c["D"], c["loss"], c["impl"], args.rounds)
        for w in args.worlds.split(",")
        for c in configs
    ]
    print()
    print("# compute alone: one rank's query blocks vs one process on the whole batch (one thread, no communication)")
    print(block_table(blocks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"distributed": rows, "blocks": blocks}, f, indent=1)


def test_bench_distributed_gather(benchmark):
    """pytest-benchmark: two gloo ranks, B_local=256, D=256, MH chunked; the gather's share in
    extra_info. The timed call is one whole measurement (process start included)."""
    configs = [{"B": 256, "D": 256, "loss": "MH", "impl": "chunked", "single": False}]
    rows = benchmark.pedantic(lambda: measure(2, configs, rounds=3), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in rows[0].items() if k.endswith("_ms") or k.endswith("_pct")})
    assert rows[0]["gather_ms"] < rows[0]["loss_ms"]


if __name__ == "__main__":
    main()
