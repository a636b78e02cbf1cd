"""Turn pytest-benchmark JSON from ``benchmarks/test_bench_losses.py`` into markdown and plots.

    pytest benchmarks --benchmark-only --benchmark-json out.json
    python benchmarks/report.py out.json --md docs/benchmarks/cpu_table.md --plots docs/benchmarks

For every (device, dtype, D) in the JSON it writes

- a markdown table of the median forward+backward time per row and batch size, with the ratio
  to the bare product measured in the same run, and a table of peak memory
  (``extra_info["peak_memory_mib"]``);
- the ratios the targets are stated in (MH chunked/triton against dense, InfoNCE chunked/triton
  against the dense CLIP formula, and both against the product);
- two PNG plots, time and peak memory against B on log-log axes, one line per loss×impl and
  anchor: ``<plots>/<prefix>_<device>_<dtype>_time.png`` and ``..._memory.png``.

Rows absent at some B (out of memory, or not run at that size) show as "—".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

ANCHOR_ORDER = [
    "product",
    "dense-formula-MH",
    "dense-formula-SH",
    "cosine-formula-MH",
    "cosine-formula-SH",
    "compiled-dense-MH",
    "PML-BatchHard-Triplet",
    "dense-CLIP",
    "Inf-CL",
]
LOSS_ORDER = ["MH", "SH", "TopK5", "Lp2", "Mix0.5", "LSE", "InfoNCE"]
# the ratios the targets are stated in: loss -> the rows its fast impls are compared with
TARGET_REFS = {"MH": ("MH/dense", "dense-formula-MH"), "InfoNCE": ("dense-CLIP", "InfoNCE/dense", "Inf-CL")}
IMPL_ORDER = ["dense", "chunked", "triton"]


def row_key(row: str) -> tuple[int, int, int, str]:
    if row in ANCHOR_ORDER:
        return (1, ANCHOR_ORDER.index(row), 0, row)
    loss, _, impl = row.partition("/")
    li = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)
    ii = IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)
    return (0, li, ii, row)


def load(paths: list[str]):
    """→ {(device_type, device, dtype, D): {row: {B: record}}}, plus the machine_info of the first file."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    meta = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = meta or {
            "machine_info": data.get("machine_info", {}),
            "datetime": data.get("datetime"),
            "commit_info": data.get("commit_info", {}),
        }
        for b in data.get("benchmarks", []):
            ei = b.get("extra_info", {})
            if "row" not in ei:
                continue
            key = (ei["device_type"], ei.get("device", ""), ei["dtype"], ei["D"])
            groups[key][ei["row"]][int(ei["B"])] = {
                "median_ms": b["stats"]["median"] * 1e3,
                "min_ms": b["stats"]["min"] * 1e3,
                "rounds": b["stats"]["rounds"],
                "peak_mib": ei.get("peak_memory_mib"),
                "grad_mib": ei.get("grad_memory_mib", 0.0),
                "method": ei.get("memory_method", ""),
            }
    return groups, meta


def fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 1:
        return f"{ms:.1f}"
    return f"{ms:.3f}"


def fmt_mib(m) -> str:
    if m is None:
        return "?"
    if m >= 1024:
        return f"{m / 1024:.2f} GiB"
    return f"{m:.1f}" if m >= 1 else f"{m:.2f}"


def group_markdown(key, rows: dict[str, dict[int, dict]]) -> str:
    dev_type, dev, dtype, D = key
    sizes = sorted({B for r in rows.values() for B in r})
    names = sorted(rows, key=row_key)
    prod = rows.get("product", {})
    out = [f"### {dev_type}: {dev}, {dtype}, D={D}", ""]
    out.append("Median forward+backward time, ms (× the product at the same B; the product row is its forward alone):")
    out.append("")
    out.append("| row | " + " | ".join(f"B={B:,}" for B in sizes) + " |")
    out.append("|---|" + "---:|" * len(sizes))
    for name in names:
        cells = []
        for B in sizes:
            r = rows[name].get(B)
            if r is None:
                cells.append("—")
                continue
            c = fmt_ms(r["median_ms"])
            if name != "product" and B in prod:
                c += f" ({r['median_ms'] / prod[B]['median_ms']:.1f}×)"
            cells.append(c)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    method = next((r["method"] for rr in rows.values() for r in rr.values() if r["method"]), "")
    out.append(f"Peak memory of one call beyond the inputs, MiB (includes both input gradients; {method}):")
    out.append("")
    out.append("| row | " + " | ".join(f"B={B:,}" for B in sizes) + " |")
    out.append("|---|" + "---:|" * len(sizes))
    for name in names:
        cells = [fmt_mib(rows[name][B]["peak_mib"]) if B in rows[name] else "—" for B in sizes]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    out += target_lines(rows, sizes, dev_type)
    return "\n".join(out)


def target_lines(rows, sizes, dev_type) -> list[str]:
    """The fast impls of MH and InfoNCE against their references and the product, at every B where
    both ran."""
    out = []
    for loss, refs in TARGET_REFS.items():
        lines = _ratio_lines(rows, sizes, loss, refs)
        if lines:
            out += [f"{loss} ratios (same run):", ""] + lines + [""]
    return out


def _ratio_lines(rows, sizes, loss: str, refs) -> list[str]:
    lines = []
    for impl in ("chunked", "triton"):
        fast = rows.get(f"{loss}/{impl}", {})
        for B in sizes:
            if B not in fast:
                continue
            f = fast[B]
            parts = []
            for ref_name in refs:
                ref = rows.get(ref_name, {}).get(B)
                if ref:
                    mem = (f["peak_mib"] / ref["peak_mib"]) if ref["peak_mib"] else float("nan")
                    parts.append(
                        f"vs {ref_name}: time {f['median_ms'] / ref['median_ms']:.3f}× "
                        f"(min/min {f['min_ms'] / ref['min_ms']:.3f}×), peak memory {mem:.3f}× (1/{1 / mem:.1f})"
                    )
            prod = rows.get("product", {}).get(B)
            if prod:
                parts.append(f"{f['median_ms'] / prod['median_ms']:.2f}× the product")
            if parts:
                lines.append(f"- {loss}/{impl} at B={B:,}: " + "; ".join(parts))
    return lines


IMPL_STYLE = {"dense": ("o", "-"), "chunked": ("^", "-."), "triton": ("D", ":")}


def line_style(name: str) -> dict:
    """Colour by loss (anchors: their own colours, the product black), line and marker by impl."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    if name in ANCHOR_ORDER:
        i = ANCHOR_ORDER.index(name)
        return {
            "color": "black" if i == 0 else matplotlib.colormaps["Dark2"](i - 1),
            "marker": "s",
            "linestyle": "--",
            "linewidth": 2.2,
        }
    loss, _, impl = name.partition("/")
    li = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else 9
    marker, ls = IMPL_STYLE.get(impl, ("x", "-"))
    return {"color": cmap(li), "marker": marker, "linestyle": ls, "linewidth": 1.4}


def plot_group(key, rows, plot_dir: str, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev_type, dev, dtype, D = key
    names = sorted(rows, key=row_key)
    files = []
    for what, field, ylabel in (
        ("time", "median_ms", "median forward+backward time (ms)"),
        ("memory", "peak_mib", "peak memory beyond inputs (MiB)"),
    ):
        fig, ax = plt.subplots(figsize=(8.5, 5.5))
        for name in names:
            pts = sorted((B, r[field]) for B, r in rows[name].items() if r.get(field) and r[field] > 0)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, markersize=4, **line_style(name))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what}: {dev}, {dtype}, D={D}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fname = os.path.join(plot_dir, f"{prefix}_{dev_type}_{dtype}_{what}.png")
        fig.savefig(fname, dpi=110)
        plt.close(fig)
        files.append(fname)
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--md", help="write the markdown here (default: stdout)")
    ap.add_argument("--plots", help="folder for the PNG plots (default: none)")
    ap.add_argument("--prefix", default="bench", help="file name prefix of the plots")
    args = ap.parse_args(argv)
    groups, meta = load(args.json)
    if not groups:
        print("no vse_losses benchmarks in", args.json, file=sys.stderr)
        return 1
    mi = meta.get("machine_info", {})
    ci = meta.get("commit_info") or {}
    commit = f"commit {str(ci.get('id', '?'))[:10]}{' + uncommitted changes' if ci.get('dirty') else ''}"
    head = [
        f"Measured {meta.get('datetime', '?')} on {mi.get('node', '?')} "
        f"({mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}), "
        f"python {mi.get('python_version', '?')}, {commit}.",
        "",
    ]
    parts = []
    md_dir = os.path.dirname(os.path.abspath(args.md)) if args.md else os.getcwd()
    for key in sorted(groups):
        text = group_markdown(key, groups[key])
        if args.plots:
            os.makedirs(args.plots, exist_ok=True)
            files = plot_group(key, groups[key], args.plots, args.prefix)
            links = " ".join(f"![{os.path.basename(f)}]({os.path.relpath(os.path.abspath(f), md_dir)})" for f in files)
            text += "\n" + links + "\n"
        parts.append(text)
    md = "\n".join(head + parts)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write(md + "\n")
        print("wrote", args.md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
