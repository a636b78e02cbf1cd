"""Compile the Triton kernels ahead of time for sm_90 (H100) with their default GPU tiles and report,
per variant, ptxas's register and spill counts, the shared memory, and the wgmma / cp.async
instructions in the PTX, as JSON on the last line of stdout. No GPU needed: triton's bundled ptxas
does the work. tests/ops/test_triton_compile.py runs it on every variant; exit status 3: the check
cannot run with this triton.

    PYTHONPATH=. python benchmarks/compile_kernels.py '[["hinge_forward", "bf16", 1, true], ...]'

A fifth element, a dict, replaces some of the variant's default tiles (for tile sweeps).
"""

import json
import os
import re
import subprocess
import sys

# ptxas's name of each target: the "a" targets of Hopper and Blackwell datacentre parts are the ones
# triton compiles for (wgmma, tcgen05)
GPU_NAMES = {80: "sm_80", 86: "sm_86", 89: "sm_89", 90: "sm_90a", 100: "sm_100a", 120: "sm_120a"}


def main(variants, arch=90):
    import torch
    import triton

    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        print(f"no ahead-of-time compile API in triton {triton.__version__}: {e}")
        return 3
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = os.path.join(bin_dir, "ptxas")
    if arch >= 100 and os.path.isfile(ptxas + "-blackwell"):  # triton's newer ptxas for its Blackwell PTX
        ptxas += "-blackwell"
    if not os.path.isfile(ptxas):
        print(f"triton {triton.__version__} has no bundled ptxas")
        return 3
    if tuple(int(v) for v in re.findall(r"\d+", triton.__version__)[:2]) < (3, 3):
        print("positional constexprs of ASTSource need triton >= 3.3")
        return 3

    from vse_losses.ops import triton_common as tc
    from vse_losses.ops import triton_hinge_norm as hn
    from vse_losses.ops import triton_hinge_norm_pairs as hp
    from vse_losses.ops import triton_lse_pairs as lp
    from vse_losses.ops import triton_max_violation_backward as mb
    from vse_losses.ops import triton_max_violation_small as sm
    from vse_losses.ops import triton_negative_max as nm
    from vse_losses.ops import triton_row_dots as rd

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    int64_ptrs = {
        "xl_ptr",
        "yl_ptr",
        "ql_ptr",
        "kl_ptr",
        "qs_ptr",
        "lq_ptr",
        "lk_ptr",
        "sq_ptr",
        "sk_ptr",
        "row_idx_ptr",
        "col_idx_ptr",
        "anc_ptr",
        "h_ptr",
        "order_ptr",
        "offsets_ptr",
        "qi_ptr",
        "ki_ptr",
    }
    data_ptrs = {"x_ptr", "y_ptr", "q_ptr", "k_ptr", "w_ptr", "gx_ptr", "gy_ptr", "own_ptr", "other_ptr", "grad_ptr"}

    def compile_one(fn, dtype, cfg, constexprs):
        jitted = tc.jitted(fn).kernel  # with the helpers it calls bound, as at run time
        names = jitted.arg_names
        const = dict(constexprs)
        const.update({k: v for k, v in cfg.items() if k in names})
        sig = {}
        for n in names:
            if n in const:
                sig[n] = "constexpr"
            elif n in data_ptrs:
                sig[n] = "*" + dtype
            elif n in int64_ptrs:
                sig[n] = "*i64"
            elif n.endswith("_ptr"):
                sig[n] = "*fp32"
            elif n in ("p", "inv_p", "pm1", "margin", "z_scale"):
                sig[n] = "fp32"
            else:
                sig[n] = "i32"
        # what triton's launcher specializes at run time: every tensor is 16-byte aligned, and at
        # the even shapes (B, M multiples of 128, D of 64) so are the sizes, offsets and strides;
        # without these hints the compiler can neither vectorize nor pipeline the loads
        aligned = [n for n in names if n.endswith("_ptr")]
        if constexprs.get("EVEN_K", True):
            aligned += [n for n in names if n in ("D", "r0") or n.startswith("stride_")]
        if constexprs.get("EVEN_M", True):
            aligned += [n for n in names if n in ("B", "M", "N", "R")]
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
        src = ASTSource(
            fn=jitted, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()}, attrs=attrs
        )
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]),
        )
        out = subprocess.run(
            [ptxas, "-v", "--gpu-name", GPU_NAMES[arch], "-", "-o", os.devnull],
            input=kernel.asm["ptx"],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ptxas {GPU_NAMES[arch]}: {(out.stderr or out.stdout).strip()[:2000]}")
        report = out.stdout + out.stderr
        spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
        regs = [int(v) for v in re.findall(r"Used (\d+) registers", report)]
        ptx = kernel.asm["ptx"]
        return dict(
            spill_bytes=spills,
            registers=regs[0] if regs else 0,
            shared=kernel.metadata.shared,
            wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
            cp_async=len(re.findall(r"cp\.async", ptx)),
            report=report,
        )

    results = {}
    for variant in variants:
        kind, dtype, mode, shape = variant[:4]
        tiles = variant[4] if len(variant) > 4 else {}  # tiles other than the defaults (tile sweeps)
        # shape: True, every size a tile multiple; "rows", B and M ragged, D (and so the rows'
        # alignment) a multiple of 64; False, nothing aligned
        even, aligned = shape is True, shape in (True, "rows")
        flags = dict(EVEN_K=aligned, EVEN_N=even)
        # the hinge kernels' mode: P_MODE (0 any p, 1: p = 1, 2: p = 2) plus 4 for SCALED (the cosine)
        p_mode, scaled = mode & 3, bool(mode & 4)
        if kind == "hinge_forward":
            cfg = dict(hn._fwd_config(dtypes[dtype], False, even, arch, scaled=scaled), **tiles)
            const = dict(P_MODE=p_mode, SCALED=scaled, EVEN_M=even, **flags)
            r = compile_one(hn._hinge_norm_fwd_kernel, dtype, cfg, const)
        elif kind == "hinge_pairs_forward":
            cfg = dict(hp._pairs_config(dtypes[dtype], False, p_mode, even, arch, scaled=scaled), **tiles)
            const = dict(P_MODE=p_mode, SCALED=scaled, SELF_REF=True, EVEN_M=even, **flags)
            r = compile_one(hp._pairs_fwd_kernel, dtype, cfg, const)
        elif kind == "small_mh":  # mode: 0 … 3 = (cosine, backward); even: the arch's largest B, else B = 16
            cfg = dict(sm._config(sm.max_batch_for(arch) if even else 16, dtypes[dtype], False), **tiles)
            const = dict(
                COSINE=mode in (1, 3),
                BACKWARD=mode in (2, 3),
                GUARD=True,
                BLOCK_B=cfg["BLOCK_B"],
                BLOCK_D=cfg["BLOCK_D"],
            )
            r = compile_one(sm._small_mh_kernel, dtype, dict(cfg, num_stages=3), const)
        elif kind == "mh_side":  # mode: cosine; even: D = 1024, else D = 100
            cfg = dict(mb._config(1024 if even else 100, False), **tiles)
            const = dict(COSINE=bool(mode), BLOCK_S=cfg["BLOCK_S"], BLOCK_D=cfg["BLOCK_D"])
            r = compile_one(mb._mh_side_kernel, dtype, dict(cfg, num_stages=3), const)
        elif kind == "row_dots":  # mode: rows gathered by index; even: D = 1024, else D = 100
            cfg = dict(rd._config(1024 if even else 100, False), **tiles)
            const = dict(GATHER_Q=bool(mode), GATHER_K=bool(mode), BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"])
            r = compile_one(rd._row_dots_kernel, dtype, dict(cfg, num_stages=3), const)
        elif kind == "lse_forward":  # mode: 0 … 7, bits (labels, column statistics, scaled: the cosine)
            cols = bool(mode & 2)
            cfg = dict(lp._fwd_config(dtypes[dtype], False, even, cols, arch), **tiles)
            const = dict(LABELS=bool(mode & 1), COLS=cols, SCALED=bool(mode & 4), EVEN_M=even, **flags)
            r = compile_one(lp._lse_fwd_kernel, dtype, cfg, const)
        elif kind == "lse_weights":  # mode: 0 … 3, bits (labels, scaled); both directions' terms
            cfg = dict(lp._weight_config(dtypes[dtype], False, even, arch), **tiles)
            const = dict(
                LABELS=bool(mode & 1), ROW_TERM=True, COL_TERM=True, SCALED=bool(mode & 2), EVEN_M=even, **flags
            )
            r = compile_one(lp._lse_weight_kernel, dtype, cfg, const)
        elif kind == "hinge_weights":
            cfg = dict(hn._weight_config(dtypes[dtype], False, p_mode, even, arch, scaled=scaled), **tiles)
            const = dict(
                P_MODE=p_mode,
                ROW_TERM=True,
                COL_TERM=True,
                SELF_Q=True,
                SELF_K=True,
                SCALED=scaled,
                EVEN_M=even,
                **flags,
            )
            r = compile_one(hn._hinge_weight_kernel, dtype, cfg, const)
        else:
            self_ref, scaled = mode in (1, 3), mode in (2, 3)  # mode: 0 … 3
            cfg = dict(nm._default_config(dtypes[dtype], False, even, aligned, arch), **tiles)
            r = compile_one(
                nm._negative_max_kernel, dtype, cfg, dict(SELF_REF=self_ref, SCALED=scaled, EVEN_M=even, **flags)
            )
        results["-".join(str(x) for x in variant[:4]) + ("-" + json.dumps(tiles, sort_keys=True) if tiles else "")] = r
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 90))
