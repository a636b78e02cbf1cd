"""Small batches: each loss's default paired call against the formula it replaces.

    python benchmarks/small_batch.py                       # B = 32, 128, 256; D = 256 and 1024
    python benchmarks/small_batch.py --B 1024 --D 256 --losses SH

Each library row is ``loss(img, cap)`` with its defaults (``impl="auto"``, cosine, ``MeanReducer``;
the losses and their arguments as in the benchmark suite, ``bench_common.ALL_LOSSES``), forward and
backward. Its formula is the one a user writes for that loss in a few lines (below): normalise,
score matrix, diagonal, the two hinge matrices with the eye mask, then the loss's own reduction
along each direction (sum, max, ``topk``, the ℓp norm, the mix, ``logsumexp``) and the mean over
the 2B terms; InfoNCE's is CLIP's (``F.cross_entropy`` both ways, ``bench_common.clip_formula``).

With ``--labelled`` the library's row is the PML call with labels,
``loss(img, labels, ref_emb=cap, ref_labels=labels)``, labels drawn from B/2 classes (so most
rows have several positives), and its formula the labelled one a user writes (the mask of equal
labels, its entries as the pairs, each pair's row and column of S masked to its negatives;
``vse_losses.check.plain_loss``).

The two calls of a row alternate within each round (``--reps`` calls each), the order flipping every
round, so that load from other processes hits both alike; the ratio is the median over rounds of the
per-round ratio. ``aten ops``: the operations one forward+backward dispatches (what a GPU pays per
call at small B, one launch each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def _hinges(x, y, margin):
    """The VSE++ criterion's two hinge matrices on cosine scores, the diagonal masked."""
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    S = x @ y.t()
    d = S.diag().view(-1, 1)
    eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    return (margin + S - d).clamp(min=0).masked_fill(eye, 0), (margin + S - d.t()).clamp(min=0).masked_fill(eye, 0)


def formula(loss: str):
    """The formula of ``loss`` (a name of ``bench_common.ALL_LOSSES``): (x, y) → the mean of its 2B
    terms, i2t along the rows of its hinge matrix, t2i along the columns of the other."""
    _, kw = bc.ALL_LOSSES[loss]
    m = kw.get("margin", bc.MARGIN)
    if loss == "InfoNCE":
        return lambda x, y: bc.clip_formula(x, y, kw["temperature"])
    if loss == "LSE":
        tau = kw["temperature"]

        def lse(x, y):
            x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
            S = x @ y.t()
            d = S.diag().view(-1, 1)
            eye = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
            # the diagonal's 0 is the "1 +" of log(1 + Σ exp(v/τ))
            a, b = ((m + S - d) / tau).masked_fill(eye, 0), ((m + S - d.t()) / tau).masked_fill(eye, 0)
            return tau * (a.logsumexp(1).sum() + b.logsumexp(0).sum()) / (2 * len(x))

        return lse
    norms = {
        "SH": lambda h, dim: h.sum(dim),
        "MH": lambda h, dim: h.max(dim)[0],
        "TopK5": lambda h, dim: h.topk(min(kw.get("k", 1), h.shape[dim]), dim)[0].sum(dim),
        "Lp2": lambda h, dim: h.pow(kw.get("p", 2.0)).sum(dim).pow(1 / kw.get("p", 2.0)),
        "Mix0.5": lambda h, dim: (1 - kw.get("mix", 0.0)) * h.sum(dim) + kw.get("mix", 0.0) * h.max(dim)[0],
    }
    norm = norms[loss]

    def hinge(x, y):
        a, b = _hinges(x, y, m)
        return (norm(a, 1).sum() + norm(b, 0).sum()) / (2 * len(x))

    return hinge


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _aten_ops(run) -> int:
    with _CountOps() as c:
        run()
    return c.n


def labelled_formula(loss: str):
    """The labelled formula of ``loss``: (x, y, labels) → the mean of its terms."""
    from vse_losses.check import LossSpec, plain_loss

    cls, kw = bc.ALL_LOSSES[loss]
    kind = bc.make_loss(loss, "dense").norm().kind
    spec = LossSpec(cls, {k: v for k, v in kw.items() if k != "margin"}, kind, kw.get("margin", bc.MARGIN))
    return lambda x, y, labels: plain_loss(spec, x, y, labels, labels)


def measure(loss: str, B: int, D: int, rounds: int, reps: int, seed: int = 0, labelled: bool = False) -> dict:
    x, y = bc.make_inputs(B, D, torch.float32, torch.device("cpu"), seed)
    with torch.no_grad():  # rows of unequal norms: the normalisation is part of the work
        x.mul_(torch.linspace(0.5, 2.0, B)[:, None])
    lib = bc.make_loss(loss, "auto")
    if labelled:
        labels = torch.randint(0, max(1, B // 2), (B,), generator=torch.Generator().manual_seed(seed))
        f = labelled_formula(loss)
        runs = [
            bc.fwd_bwd(x, y, lambda: lib(x, labels, ref_emb=y, ref_labels=labels)),
            bc.fwd_bwd(x, y, lambda: f(x, y, labels)),
        ]
    else:
        f = formula(loss)
        runs = [bc.fwd_bwd(x, y, lambda: lib(x, y)), bc.fwd_bwd(x, y, lambda: f(x, y))]
    for r in runs:
        r()
    ops = [_aten_ops(r) for r in runs]
    t = [[], []]
    for i in range(rounds):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            for _ in range(reps):
                runs[j]()
            t[j].append((time.perf_counter() - t0) / reps)
    return {
        "loss": loss,
        "B": B,
        "D": D,
        "ms": statistics.median(t[0]) * 1e3,
        "formula_ms": statistics.median(t[1]) * 1e3,
        "ratio": statistics.median(a / b for a, b in zip(*t)),
        "ops": ops[0],
        "formula_ops": ops[1],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", default="32,128,256", help="comma-separated batch sizes")
    ap.add_argument("--D", default="256,1024", help="comma-separated embedding sizes")
    ap.add_argument("--losses", default=",".join(bc.ALL_LOSSES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20, help="calls per row and round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--labelled", action="store_true", help="the PML call with labels against the labelled formula")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    losses = args.losses.split(",")
    unknown = [name for name in losses if name not in bc.ALL_LOSSES]
    if unknown:
        ap.error(f"unknown loss {unknown[0]!r}; choose from {', '.join(bc.ALL_LOSSES)}")
    print(
        f"{'labelled' if args.labelled else 'paired'} calls, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, forward+backward, "
        f"median of per-round ratios over {args.rounds} interleaved rounds of {args.reps} calls"
    )
    print(f"{'D':>5} {'B':>5} {'loss':<8} {'ms':>8} {'formula ms':>10} {'× formula':>9} {'ops':>5} {'formula ops':>11}")
    for D in map(int, args.D.split(",")):
        for B in map(int, args.B.split(",")):
            for loss in losses:
                r = measure(loss, B, D, args.rounds, args.reps, labelled=args.labelled)
                print(
                    f"{D:>5} {B:>5} {loss:<8} {r['ms']:>8.3f} {r['formula_ms']:>10.3f} {r['ratio']:>8.2f}× "
                    f"{r['ops']:>5} {r['formula_ops']:>11}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
