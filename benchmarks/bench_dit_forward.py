"""DiT forward speed on this machine: official bf16 compute vs fp32 compute, against the best GEMM
rate measured in the same run. Prints numbers and ratios; gates nothing.

    python benchmarks/bench_dit_forward.py [--layers 8] [--hidden 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

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
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def time_forward(model, inputs, repeats: int) -> float:
    with torch.inference_mode():
        model(*inputs[:3], inputs[3])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*inputs[:3], inputs[3])
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--kv-groups", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cfg = DiTConfig(num_layers=args.layers, hidden_size=args.hidden, head_dim=128, num_query_groups=args.kv_groups,
                    mm_layers=[0, args.layers - 1], gelu7_layers=[0, 1])
    model = MagiHumanDiT(cfg).eval()  # bf16 block linears (official layout), random init
    g = torch.Generator().manual_seed(0)
    t, hh, ww, n_audio, n_text = 4, 24, 32, 13, 219  # 768 video + 13 audio + 219 text = 1000 tokens
    inputs = (torch.randn(1, 48, t, hh, ww, generator=g), torch.randn(1, n_audio, 64, generator=g),
              torch.randn(1, n_text, cfg.text_in_channels, generator=g), [n_text])
    nv = t * (hh // 2) * (ww // 2)
    flops = dit_matmul_flops(cfg, nv, n_audio, n_text)
    tokens = nv + n_audio + n_text
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; config hidden {cfg.hidden_size}, "
          f"{cfg.num_layers} layers, {cfg.num_heads_q} q / {cfg.num_heads_kv} kv heads; {tokens} tokens; "
          f"{flops / 1e9:.1f} GFLOP per forward (matmuls)")

    shapes = [(tokens, cfg.hidden_size, 2 * cfg.swiglu_intermediate_size), (tokens, cfg.hidden_size, cfg.qkv_out_features)]

    def measure_gemm(gemm):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in shapes:
                gemm[dtype, shape] = max(gemm.get((dtype, shape), 0.0), best_gemm_gflops(*shape, dtype))

    gemm: dict = {}
    measure_gemm(gemm)  # before and after the forwards: the CPU is shared, keep the best
    seconds = {}
    for cd in (torch.bfloat16, torch.float32):
        model.set_compute_dtype(cd)
        seconds[cd] = time_forward(model, inputs, args.repeats)
    measure_gemm(gemm)

    best = {dt: max(v for (d, _), v in gemm.items() if d == dt) for dt in (torch.float32, torch.bfloat16)}
    for (dt, shape), rate in gemm.items():
        print(f"GEMM (F.linear) {str(dt):15s} {shape[0]}x{shape[1]}x{shape[2]}: {rate:8.1f} GFLOP/s")
    for cd, sec in seconds.items():
        rate = flops / sec / 1e9
        print(f"forward compute {str(cd):15s}: {sec * 1e3:8.1f} ms  {rate:8.1f} GFLOP/s  "
              f"= {rate / best[cd]:.2f} of best {cd} GEMM, {rate / max(best.values()):.2f} of best GEMM overall")
    results = seconds
    print(f"fp32-compute speed-up over bf16-compute: {results[torch.bfloat16] / results[torch.float32]:.2f}x")
    print("(shared CPU: numbers are noisy; best of repeats)")


if __name__ == "__main__":
    main()
