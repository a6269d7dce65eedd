"""Regional torch.compile of the DiT at the mid config (hidden 1024, 8 layers, 1000 tokens): compile
time, graphs compiled, and the steady-state speed-up over eager, per compute dtype. Gates nothing.

    python benchmarks/bench_compile.py [--dtypes bf16,fp32] [--threads N] [--backend inductor]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dit_forward import bench_setup, load_line, time_forward  # noqa: E402

from magihuman.compile import compile_dit_blocks, layer_kinds, uncompile_dit_blocks  # noqa: E402
from magihuman.device import resolve_compute_dtype  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from torch._dynamo.utils import counters

    cfg, model, inputs, flops, tokens = bench_setup(args.layers, args.hidden, 2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {load_line()}; hidden {cfg.hidden_size}, "
          f"{cfg.num_layers} layers ({len(layer_kinds(model))} layer kinds), {tokens} tokens, backend {args.backend}")
    for name in args.dtypes.split(","):
        model.set_compute_dtype(resolve_compute_dtype(name))
        _, eager = time_forward(model, inputs, args.repeats)
        torch._dynamo.reset()
        counters.clear()
        compile_dit_blocks(model, backend=args.backend)
        first, compiled = time_forward(model, inputs, args.repeats)
        graphs = counters["stats"]["unique_graphs"]
        uncompile_dit_blocks(model)
        print(f"{name}: eager {eager * 1e3:8.1f} ms, compiled {compiled * 1e3:8.1f} ms -> {eager / compiled:.2f}x; "
              f"first compiled call {first:6.1f} s ({graphs} graphs); {flops / compiled / 1e9:.1f} GFLOP/s compiled")
    print(f"({load_line()} at the end; shared CPU, best of repeats)")


if __name__ == "__main__":
    main()
