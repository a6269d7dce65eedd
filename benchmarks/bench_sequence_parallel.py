"""Sequence parallelism (Ulysses): communication per step, expected speed-up on H100s, and a measured CPU run.

``python benchmarks/bench_sequence_parallel.py [--seconds 5] [--skip-measure]``

1. Communication volume of one step from the model (:func:`magihuman.parallel.cost.exchange_bytes`): per rank, 2
   all-to-alls per layer (q|k|v, then the attention output) plus one all-gather of the output; bf16 exchange.
2. Expected time per step and speed-up at 2/4/8 GPUs (:func:`magihuman.parallel.cost.speedup`): the estimator's
   FLOPs per forward (local attention counted as the 1080p model runs it), split N ways, plus the exchange time.
   Assumptions, printed with the table: ~500 TFLOP/s effective bf16 per H100 (what the official timings imply with
   this FLOP count, benchmarks/bench_estimate_vs_official.py), ~400 GB/s effective all-to-all bandwidth per GPU over
   NVLink 4, 20 us per collective; "serial" = no overlap of the exchange with compute (this engine), "overlap" =
   perfect overlap (upper bound). The same for a consumer PCIe machine as a sensitivity check.
3. A measured gloo run on the CPU (2 processes x 1 thread vs 1 process x 1 and x 2 threads) of a mid-size config:
   time per forward and the bytes counted by the engine next to the model's bytes (a sanity check of the
   model and of the plumbing; CPU gloo says nothing about GPU speed).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/_timing.py

import torch  # noqa: E402

from _timing import now  # noqa: E402
from magihuman.estimate import dit_forward_flops, estimate  # noqa: E402
from magihuman.models.dit_config import DiTConfig  # noqa: E402
from magihuman.parallel.cost import H100_NVLINK, PCIE4_CONSUMER, exchange_bytes, speedup  # noqa: E402

STAGES = [  # label, official 1-H100 seconds of the stage (official README, 5 s clip), estimate kwargs, stage index
    ("256p distill (448x256, 8 steps)", 1.6, dict(preset="distill_256p"), 0),
    ("540p SR (896x512, 5 steps)", 5.1, dict(preset="distill_540p"), 1),
    ("1080p SR (1920x1088, 5 steps)", 31.0, dict(preset="distill_256p", sr_width=1920, sr_height=1088,
                                                sr_model="sr_1080p"), 1),
]
RANKS = (2, 4, 8)
MB = 1e6


def _stage(kw: dict, idx: int, seconds: float, prompt_tokens: int):
    st = estimate(seconds=seconds, prompt_tokens=prompt_tokens, **kw).stages[idx]
    cfg = DiTConfig.preset(st.model)
    flops = dit_forward_flops(cfg, st.grid, st.audio_tokens, st.text_tokens)
    return st, cfg, flops


def communication(args) -> None:
    print(f"\n1. communication per DiT step, per rank (bf16 exchange, {args.seconds:g} s clip, prompt "
          f"{args.prompt_tokens} tokens; one forward per step: distilled and SR steps run without CFG)")
    head = (f"{'stage':<32}{'N':>3}{'tokens':>8}{'/rank':>7}{'q|k|v a2a':>11}{'out a2a':>9}{'a2a/step':>9}"
            f"{'MB/step':>9}{'wire MB':>9}{'group MB':>10}{'gather MB':>10}")
    print(head)
    print("-" * len(head))
    for label, _, kw, idx in STAGES:
        st, cfg, flops = _stage(kw, idx, args.seconds, args.prompt_tokens)
        for n in RANKS:
            ex = exchange_bytes(cfg, flops["length"], n, batch=1, dtype_bytes=2)
            per_step = st.forwards_per_step
            print(f"{label if n == RANKS[0] else '':<32}{n:>3}{flops['length']:>8}{ex['tokens_per_rank']:>7}"
                  f"{ex['qkv_bytes'] / MB:>9.1f}MB{ex['out_bytes'] / MB:>7.1f}MB"
                  f"{ex['all_to_all_calls'] * per_step:>9}{ex['all_to_all_bytes'] * per_step / MB:>9.0f}"
                  f"{ex['wire_bytes'] * per_step / MB:>9.0f}{ex['total_wire_bytes'] * per_step / MB:>10.0f}"
                  f"{ex['all_gather_bytes'] / MB:>10.2f}")
    print("q|k|v a2a / out a2a: the buffer one rank sends in each of the 2 all-to-alls of a layer; MB/step: all of "
          "them (80 per forward); wire: the (N-1)/N that leaves the GPU, plus the output all-gather; group: all ranks")


def speedups(args) -> None:
    for link in (H100_NVLINK, PCIE4_CONSUMER):
        print(f"\n2. expected time per step and speed-up, {link.name}: {link.flops_per_second / 1e12:.0f} TFLOP/s "
              f"effective bf16 per GPU, {link.bytes_per_second / 1e9:.0f} GB/s all-to-all per GPU, "
              f"{link.latency_seconds * 1e6:.0f} us per collective")
        head = (f"{'stage':<32}{'1 GPU s':>8}{'N':>3}{'compute s':>10}{'comm s':>8}{'serial x':>9}{'overlap x':>10}"
                f"{'stage s (official/x)':>21}")
        print(head)
        print("-" * len(head))
        for label, official, kw, idx in STAGES:
            st, cfg, flops = _stage(kw, idx, args.seconds, args.prompt_tokens)
            for n in RANKS:
                sp = speedup(cfg, flops, n, link)
                stage = f"{official / sp['speedup_serial']:.1f}" if link is H100_NVLINK else "-"
                print(f"{label if n == RANKS[0] else '':<32}{sp['t1']:>8.3f}{n:>3}{sp['compute']:>10.3f}"
                      f"{sp['comm']:>8.3f}{sp['speedup_serial']:>8.2f}x{sp['speedup_overlap']:>9.2f}x{stage:>21}")
    print("1 GPU s: one step at the assumed rate; serial x: speed-up without overlap (this engine); overlap x: with "
          "perfect overlap; stage s: the official one-H100 stage time (official README) divided by the serial speed-up. "
          "Smaller per-GPU matmuls lose some efficiency, which this model ignores.")


# ---------------------------------------------------------------------------------------------------------------
# 3. measured on the CPU

MID = dict(num_layers=4, hidden_size=512, head_dim=64, num_query_groups=2, text_in_channels=64, mm_layers=[0, 3],
           gelu7_layers=[0])


def _mid_inputs():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 48, 4, 16, 16, generator=g)  # 4 x 8 x 8 = 256 video tokens
    return video, torch.randn(1, 101, 64, generator=g), torch.randn(1, 60, 64, generator=g), [57]


def _time_forwards(model, repeats: int) -> float:
    inputs = _mid_inputs()
    with torch.no_grad():
        model(*inputs)  # warm-up
        t0 = now()
        for _ in range(repeats):
            model(*inputs)
    return (now() - t0) / repeats


def _mid_model():
    from magihuman.models.dit import MagiHumanDiT

    return MagiHumanDiT(DiTConfig(**MID), dtype=torch.float32, compute_dtype=torch.float32)


def _rank_timing(repeats: int) -> dict:
    from magihuman.parallel import enable_sequence_parallel

    model = _mid_model()
    sp = enable_sequence_parallel(model)
    seconds = _time_forwards(model, repeats)
    stats = sp.stats.as_dict()
    return dict(seconds=seconds, stats=stats, forwards=repeats + 1)


def measure(args) -> None:
    from magihuman.parallel.launch import run_local

    repeats = args.repeats
    cfg = DiTConfig(**MID)
    length = 256 + 101 + 57
    print(f"\n3. measured on this CPU (gloo, fp32): a mid config (hidden 512, 8 query / 2 kv heads, 4 layers), "
          f"{length} tokens, mean of {repeats} forwards")
    torch.set_num_threads(1)
    one_1 = _time_forwards(_mid_model(), repeats)
    torch.set_num_threads(2)
    one_2 = _time_forwards(_mid_model(), repeats)
    torch.set_num_threads(1)
    ranks = run_local(_rank_timing, 2, repeats, timeout=600)
    two = max(r["seconds"] for r in ranks)
    st = ranks[0]["stats"]
    model = exchange_bytes(cfg, length, 2, batch=1, dtype_bytes=4)
    per_fwd = st["all_to_all_bytes"] / ranks[0]["forwards"]
    print(f"1 process x 1 thread : {one_1 * 1e3:8.1f} ms/forward")
    print(f"1 process x 2 threads: {one_2 * 1e3:8.1f} ms/forward")
    inside = st["seconds"] / ranks[0]["forwards"] * 1e3
    print(f"2 ranks x 1 thread   : {two * 1e3:8.1f} ms/forward  (x{one_1 / two:.2f} vs 1 thread, x{one_2 / two:.2f} "
          f"vs 2 threads; {inside:.1f} ms of it inside the collectives)")
    calls = st["all_to_all_calls"] // ranks[0]["forwards"]
    print(f"bytes per forward and rank: measured {per_fwd / 1e6:.3f} MB in {calls} all-to-alls, model "
          f"{model['all_to_all_bytes'] / 1e6:.3f} MB in {model['all_to_all_calls']} "
          f"({'equal' if per_fwd == model['all_to_all_bytes'] else 'DIFFERENT'}); "
          f"gather {st['all_gather_bytes'] / ranks[0]['forwards'] / 1e3:.1f} kB (model "
          f"{model['all_gather_bytes'] / 1e3:.1f} kB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="clip length (the official timings are for 5 s)")
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="forwards timed in the CPU measurement")
    ap.add_argument("--skip-measure", action="store_true", help="only the model (no processes started)")
    args = ap.parse_args()
    communication(args)
    speedups(args)
    if not args.skip_measure:
        measure(args)


if __name__ == "__main__":
    main()
