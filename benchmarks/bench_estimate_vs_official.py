"""Implied throughput of the official H100 timings (the official README), from our FLOP counts.

A calculation, not a timing: ``python benchmarks/bench_estimate_vs_official.py [--prompt-tokens N]``.

The official speed table (5 s clip, one H100, MagiCompiler) lists the base stage of every resolution as
1.6 s: that is the distilled DiT (8 steps, one pass) at 448x256; the 32-step CFG base model would need
about 8x the work. SR stages run 5 steps, one pass (example configs: sr_cfg_number 1); 1080p SR uses local
attention in 32 of 40 layers (official FFA kernel: masked blocks are skipped).

It also reproduces the often quoted "≈1.1e15 FLOP for 8 steps at ~4k tokens": that figure is 2 · (all 15.3e9 parameters) ·
4000 tokens · 8 steps + attention, i.e. it charges every token for the three experts of the mm layers;
each token really multiplies 10.9e9 block weights.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from magihuman.estimate import dit_param_count, estimate  # noqa: E402
from magihuman.models.dit_config import DiTConfig  # noqa: E402

H100_SXM_BF16_DENSE = 989.4e12  # FLOP/s, NVIDIA H100 SXM datasheet (dense, no sparsity)

# (label, official seconds, estimate kwargs, stage index)
OFFICIAL = [
    ("256p base (distill 8 steps)", 1.6, dict(preset="distill_256p"), 0),
    ("540p SR (896x512, 5 steps)", 5.1, dict(preset="distill_540p"), 1),
    ("1080p SR (1920x1088, 5 steps)", 31.0, dict(preset="distill_256p", sr_width=1920, sr_height=1088,
                                                sr_model="sr_1080p"), 1),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=100, help="real prompt length in T5Gemma tokens")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    print(f"official H100 timings vs this FLOP model ({args.seconds:g} s clip, prompt {args.prompt_tokens} tokens; "
          f"H100 SXM dense bf16 peak {H100_SXM_BF16_DENSE / 1e12:.0f} TFLOP/s)")
    head = (f"{'stage':<32}{'tokens':>8}{'steps':>6}{'PFLOP':>8}{'dense-mask':>11}{'time s':>8}"
            f"{'TFLOP/s':>9}{'of peak':>8}")
    print(head)
    print("-" * len(head))
    for label, secs, kw, idx in OFFICIAL:
        st = estimate(seconds=args.seconds, prompt_tokens=args.prompt_tokens, **kw).stages[idx]
        dense = estimate(seconds=args.seconds, prompt_tokens=args.prompt_tokens, local_attention="mask",
                         **kw).stages[idx].executed_flops_total
        rate = st.flops_total / secs
        print(f"{label:<32}{st.sequence_length:>8}{st.steps:>6}{st.flops_total / 1e15:>8.2f}"
              f"{dense / 1e15:>11.2f}{secs:>8.1f}{rate / 1e12:>9.0f}{rate / H100_SXM_BF16_DENSE:>8.0%}")
        if st.local_layers:
            print(f"{'':<32}(a dense-mask kernel would have to run {dense / secs / 1e12:.0f} TFLOP/s: "
                  "the official FFA kernel skips masked blocks)")

    st = estimate("distill_256p", seconds=args.seconds, prompt_tokens=args.prompt_tokens).stages[0]
    base = estimate("base_256p", seconds=args.seconds, prompt_tokens=args.prompt_tokens, cfg_batched=False).stages[0]
    print(f"\nfor scale: the 32-step CFG base stage at 256p (negative prompt {base.negative_text_tokens} tokens, "
          f"separate passes) is {base.flops_total / 1e15:.2f} PFLOP ({base.flops_total / st.flops_total:.1f}x "
          "the distilled stage)")

    p = dit_param_count(DiTConfig.preset("base"))
    attn = st.attention_flops_total
    quoted = 2 * p["total"] * 4000 * st.steps + attn * (4000 / st.sequence_length) ** 2
    print(f"\nparameters: {p['total']:,} stored ({p['block_linear']:,} block-linear), "
          f"{p['per_token_block_linear']:,} block-linear per token")
    print(f"256p distill: ours {st.flops_total:.3e} FLOP at {st.sequence_length} tokens; the quoted rule "
          f"2·all params·4000 tokens·8 + attention = {quoted:.3e} (quoted: ≈1.1e15)")


if __name__ == "__main__":
    main()
