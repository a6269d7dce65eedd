"""DiT forward speed on this machine: official bf16 compute, fp32 compute, the device-aware choice
(``set_compute_dtype("auto")``) and that choice under regional ``torch.compile``, each against the
best GEMM rate measured in the same run. Prints numbers and ratios; gates nothing.

    python benchmarks/bench_dit_forward.py [--layers 8] [--hidden 1024] [--repeats 3] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman.models.dit import DiTConfig, MagiHumanDiT


def dit_matmul_flops(cfg: DiTConfig, nv: int, na: int, nt: int) -> float:
    """Analytic FLOPs (2 per multiply-add) of the matmuls of one forward (experts do not add FLOPs)."""
    h, d = cfg.hidden_size, cfg.head_dim
    n = nv + na + nt
    flops = 2.0 * h * (nv * cfg.video_in_channels + na * cfg.audio_in_channels + nt * cfg.text_in_channels)  # adapter
    flops += 2.0 * h * (nv * cfg.video_in_channels + na * cfg.audio_in_channels)  # final heads
    for i in range(cfg.num_layers):
        gelu = i in cfg.gelu7_layers
        up = cfg.gelu_intermediate_size if gelu else 2 * cfg.swiglu_intermediate_size
        inner = cfg.gelu_intermediate_size if gelu else cfg.swiglu_intermediate_size
        flops += 2.0 * n * h * (cfg.qkv_out_features + cfg.num_heads_q * d + up) + 2.0 * n * inner * h
        flops += 4.0 * n * n * cfg.num_heads_q * d  # QK^T and PV
    return flops


def best_gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """Best rate of ``F.linear(x [m, k], w [n, k])``: the exact call and weight layout the DiT uses."""
    a, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(repeats):
        t0 = now()
        torch.nn.functional.linear(a, w)
        best = min(best, now() - t0)
    return 2.0 * m * k * n / best / 1e9


def time_forward(model, inputs, repeats: int) -> tuple[float, float]:
    """(first call, best of ``repeats`` later calls; inf when 0) in seconds."""
    with torch.inference_mode():
        t0 = now()
        model(*inputs[:3], inputs[3])  # warm-up (compiles when compiled)
        first = now() - t0
        best = float("inf")
        for _ in range(repeats):
            t0 = now()
            model(*inputs[:3], inputs[3])
            best = min(best, now() - t0)
    return first, best


def bench_setup(layers: int, hidden: int, kv_groups: int):
    cfg = DiTConfig(num_layers=layers, hidden_size=hidden, head_dim=128, num_query_groups=kv_groups,
                    mm_layers=[0, layers - 1], gelu7_layers=[0, 1])
    model = MagiHumanDiT(cfg).eval()  # bf16 block linears (official layout), random init
    g = torch.Generator().manual_seed(0)
    t, hh, ww, n_audio, n_text = 4, 24, 32, 13, 219  # 768 video + 13 audio + 219 text = 1000 tokens
    inputs = (torch.randn(1, 48, t, hh, ww, generator=g), torch.randn(1, n_audio, 64, generator=g),
              torch.randn(1, n_text, cfg.text_in_channels, generator=g), [n_text])
    nv = t * (hh // 2) * (ww // 2)
    return cfg, model, inputs, dit_matmul_flops(cfg, nv, n_audio, n_text), nv + n_audio + n_text


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def load_line() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--kv-groups", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from magihuman.compile import compile_dit_blocks
    from magihuman.device import gemm_rates, pick_compute_dtype

    cfg, model, inputs, flops, tokens = bench_setup(args.layers, args.hidden, args.kv_groups)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {load_line()}; config hidden "
          f"{cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads_q} q / {cfg.num_heads_kv} kv heads; "
          f"{tokens} tokens; {flops / 1e9:.1f} GFLOP per forward (matmuls)")

    shapes = [(tokens, cfg.hidden_size, 2 * cfg.swiglu_intermediate_size), (tokens, cfg.hidden_size, cfg.qkv_out_features)]

    def measure_gemm(gemm, repeats=10):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in shapes:
                gemm[dtype, shape] = max(gemm.get((dtype, shape), 0.0), best_gemm_gflops(*shape, dtype, repeats))

    gemm: dict = {}
    measure_gemm(gemm)  # before and after the forwards: the CPU is shared, keep the best
    rates = gemm_rates("cpu", refresh=True)
    auto = pick_compute_dtype("cpu", rates=rates)
    modes = {"official bf16": (model, torch.bfloat16), "fp32 compute": (model, torch.float32),
             f"device-aware ({dtype_name(auto)})": (model, auto)}
    if not args.no_compile:
        compiled = bench_setup(args.layers, args.hidden, args.kv_groups)[1]  # same deterministic weights
        compile_dit_blocks(compiled)
        modes["device-aware + compiled"] = (compiled, auto)
    # rounds over all modes, best per mode: load swings on a shared CPU hit every mode alike
    rows = {label: (cd, None, float("inf")) for label, (_, cd) in modes.items()}
    for r in range(args.repeats + 1):
        measure_gemm(gemm, 3)  # GEMM rates sampled in every round too, so both see the same load swings
        for label, (m, cd) in modes.items():
            m.set_compute_dtype(cd)
            sec, _ = time_forward(m, inputs, 0)  # one timed call
            _, first, best_sec = rows[label]
            rows[label] = (cd, sec, best_sec) if r == 0 else (cd, first, min(best_sec, sec))
    measure_gemm(gemm)

    best = {dt: max(v for (d, _), v in gemm.items() if d == dt) for dt in (torch.float32, torch.bfloat16)}
    print("gemm_rates (1024^3 F.linear): " + ", ".join(f"{dtype_name(k)} {v:.1f}" for k, v in rates.items())
          + f" GFLOP/s -> auto picks {auto}")
    for (dt, shape), rate in gemm.items():
        print(f"GEMM (F.linear) {str(dt):15s} {shape[0]}x{shape[1]}x{shape[2]}: {rate:8.1f} GFLOP/s")
    base = rows["official bf16"][2]
    for label, (cd, first, sec) in rows.items():
        rate = flops / sec / 1e9
        print(f"{label:28s}: {sec * 1e3:8.1f} ms (first call {first:7.1f} s)  {rate:7.1f} GFLOP/s = "
              f"{rate / best[cd]:.2f} of best {dtype_name(cd)} GEMM, "
              f"{rate / max(best.values()):.2f} of best GEMM; {base / sec:.2f}x vs official bf16")
    print(f"(shared CPU, {load_line()} at the end: numbers are noisy; best of repeats)")


if __name__ == "__main__":
    main()
