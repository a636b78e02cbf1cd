"""The CPU memory/time targets of the chunked losses, measured so that a shared machine disturbs them
as little as possible.

    python benchmarks/cpu_target.py                 # MH, B=8192, D=256, fp32: chunked vs dense
    python benchmarks/cpu_target.py --loss InfoNCE  # InfoNCE chunked vs the dense CLIP formula
    python benchmarks/cpu_target.py --profile       # + where chunked spends its time

Targets, on 2 CPU cores, forward+backward:

- MH with ``impl="chunked"``: at most 1/8 of the peak memory and at most 0.5× the time of
  ``impl="dense"`` (the dense-formula anchor runs beside them);
- InfoNCE with ``impl="chunked"``: at most 1/8 of the peak memory and at most 1.0× the time of
  the dense CLIP formula (``dense-CLIP``: normalise, ``S = x yᵀ/τ``, ``F.cross_entropy`` both
  ways, mean); ``InfoNCE/dense`` runs beside them.

Other losses are measured against their ``impl="dense"`` with MH's target. The rows are called in
rotation, one call each per round, the order rotating every round, so that a change of load from
other processes hits all of them alike; the time ratio is the median over rounds of the per-round
ratio. Peak memory is measured as in the benchmarks (torch.profiler allocator events, see
``bench_common``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# idle OpenMP threads sleep rather than spin (see benchmarks/conftest.py); before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

# loss -> (the reference row of its target, memory ratio, time ratio, the row measured beside them)
TARGETS = {
    "MH": ("MH/dense", 1 / 8, 0.5, "dense-formula-MH"),
    "SH": ("SH/dense", 1 / 8, 0.5, "dense-formula-SH"),
    "InfoNCE": ("dense-CLIP", 1 / 8, 1.0, "InfoNCE/dense"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=8192)
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--loss", default="MH", choices=list(bc.ALL_LOSSES))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--no-anchor",
        action="store_true",
        help="leave out the row that runs beside the target's two (MH, SH: the dense formula; InfoNCE: impl='dense')",
    )
    ap.add_argument("--profile", action="store_true", help="print chunked's top operators (torch.profiler)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    x, y = bc.make_inputs(args.B, args.D, torch.float32, dev)
    ref, mem_target, time_target, anchor = TARGETS.get(args.loss, (f"{args.loss}/dense", 1 / 8, 0.5, None))
    fast = f"{args.loss}/chunked"
    names = [ref, fast] + ([anchor] if anchor and not args.no_anchor else [])  # the reference first
    rows = {n: bc.anchor_fn(n, x, y) if n in bc.ANCHORS else bc.loss_fn(*n.split("/"), x, y) for n in names}
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {bc.device_name(dev)}  torch {torch.__version__}")
    print(
        f"# {args.loss}, B={args.B}, D={args.D}, float32, forward+backward; load average at start {load[0]:.1f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    peak = {}
    for n in names:
        rows[n]()  # warm-up (first touch of the large buffers)
        peak[n] = bc.peak_memory_mib(rows[n], dev, clear=(x, y))
    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            rows[n]()
            times[n].append(time.perf_counter() - t)
    try:
        load_end = os.getloadavg()[0]
    except OSError:
        load_end = float("nan")
    print(f"# load average at end {load_end:.1f}")
    print(f"{'row':<22} {'median s':>9} {'min s':>8} {'peak MiB':>9}   all calls (s)")
    for n in names:
        print(
            f"{n:<22} {statistics.median(times[n]):>9.3f} {min(times[n]):>8.3f} {peak[n]:>9.1f}   "
            + " ".join(f"{t:.2f}" for t in times[n])
        )
    per_round = [a / b for a, b in zip(times[fast], times[ref])]
    t_ratio = statistics.median(per_round)
    m_ratio = peak[fast] / peak[ref]
    print(
        f"\n{fast} / {ref}: time {t_ratio:.3f}× "
        f"(median of per-round ratios {', '.join(f'{r:.3f}' for r in per_round)}; "
        f"min/min {min(times[fast]) / min(times[ref]):.3f}×), peak memory {m_ratio:.4f}× (1/{1 / m_ratio:.1f})"
    )
    if len(names) > 2:
        a = names[2]
        pr = [u / v for u, v in zip(times[fast], times[a])]
        print(f"{fast} / {a}: time {statistics.median(pr):.3f}×, peak memory {peak[fast] / peak[a]:.4f}×")
    print(
        f"target against {ref}: memory ≤ 1/{1 / mem_target:g}: {'PASS' if m_ratio <= mem_target else 'MISS'}; "
        f"time ≤ {time_target:g}×: {'PASS' if t_ratio <= time_target else 'MISS'}"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rows[fast]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
