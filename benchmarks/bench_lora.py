"""extract-lora and LoRA overhead on a synthetic pair (random weights: the real distill/SR deltas are not here).

The target is base + a rank-32 delta per block linear (per expert in the multi-modal layers) + a dense, full-rank
delta of a tenth of that size, so that rank and kept energy trade off as they would for a partly low-rank
fine-tune. Printed, from the same run: for each extraction rank, the energy kept, the LoRA file size against
the bf16 target, the output error of base + LoRA against the target model, the time to extract; then the cost
of applying a LoRA (load + map + attach) and the forward time with the LoRA patched on the fly vs without.

    python benchmarks/bench_lora.py [--config mid|tiny] [--ranks 4,16,32,64] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman.checkpoints import load_dit, write_tiny_dit  # noqa: E402
from magihuman.lora import apply_lora, remove_lora  # noqa: E402
from magihuman.lora_extract import extract_lora  # noqa: E402
from magihuman.models.dit import DiTConfig  # noqa: E402
from magihuman.weights import safetensors_io as sio  # noqa: E402

MID = DiTConfig(num_layers=8, hidden_size=1024, head_dim=128, num_query_groups=2, text_in_channels=256,
                mm_layers=[0, 1, 6, 7], gelu7_layers=[0, 1])
BLOCK_LINEARS = ("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight", "down_proj.weight")


def make_pair(root: Path, cfg: DiTConfig, low_rank: int = 32) -> tuple[Path, Path]:
    base = write_tiny_dit(root / "base.safetensors", layout="file", config=cfg, variant="base", seed=1)
    sd = sio.load_file(base)
    g = torch.Generator().manual_seed(7)
    target = {}
    for key, t in sd.items():
        t = t.float().clone()
        if key.endswith(BLOCK_LINEARS):
            experts = 3 if int(key.split(".")[2]) in cfg.mm_layers else 1
            rows = t.shape[0] // experts
            for e in range(experts):
                part = t[e * rows:(e + 1) * rows]
                up = torch.randn(rows, low_rank, generator=g)
                down = torch.randn(low_rank, t.shape[1], generator=g)
                delta = up @ down
                delta *= 0.2 * part.norm() / delta.norm()  # a 20 % change of the layer
                dense = torch.randn(part.shape, generator=g)
                part += delta + dense * (0.1 * delta.norm() / dense.norm())
        target[key] = t
    tpath = root / "target.safetensors"
    sio.write_file(tpath, target, {"magihuman_variant": "distill"})
    return base, tpath


def inputs(cfg: DiTConfig, tokens: int):
    """4 latent frames of a 1:2 latent grid holding ~90 % of ``tokens``, 13 audio steps, 64 text tokens."""
    g = torch.Generator().manual_seed(0)
    side = max(2, int((tokens * 0.9 / 2) ** 0.5)) // 2 * 2  # video tokens = 4 * (side/2) * side
    video = torch.randn(1, 48, 4, side, side * 2, generator=g)
    audio = torch.randn(1, 13, 64, generator=g)
    text = torch.randn(1, 64, cfg.text_in_channels, generator=g)
    return video, audio, text, [64]


def token_count(x) -> int:
    video, audio, text, _ = x
    return video.shape[2] * video.shape[3] // 2 * video.shape[4] // 2 + audio.shape[1] + text.shape[1]


def forward(model, x, repeats=3):
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = now()
            out = model(*x)
            best = min(best, now() - t0)
    return out, best


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=["mid", "tiny"], default="mid")
    ap.add_argument("--ranks", default="4,16,32,64")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = MID if args.config == "mid" else DiTConfig.preset("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, target = make_pair(root, cfg)
        x = inputs(cfg, args.tokens)
        tgt = load_dit(target, dtype=torch.float32, show_progress=False)
        tgt.set_compute_dtype(torch.float32)
        ref, _ = forward(tgt, x, 1)
        bf16_bytes = sum(p.numel() for n, p in tgt.named_parameters() if n.endswith(BLOCK_LINEARS)) * 2
        model = load_dit(base, dtype=torch.float32, show_progress=False)
        model.set_compute_dtype(torch.float32)
        plain, _ = forward(model, x, 1)
        print(f"{args.config} config: {cfg.num_layers} layers, hidden {cfg.hidden_size}; target = base + rank-32 "
              f"+ dense deltas; {token_count(x)} tokens; {args.threads} threads")
        print(f"base alone vs target: video rel L2 {rel(plain[0], ref[0]):.4f}, audio {rel(plain[1], ref[1]):.4f}")
        print(f"{'rank':>5} {'energy':>8} {'LoRA MiB':>9} {'vs bf16':>8} {'video err':>10} {'audio err':>10} "
              f"{'extract s':>10}")
        for rank in (int(r) for r in args.ranks.split(",")):
            out = root / f"r{rank}.safetensors"
            t0 = now()
            rep = extract_lora(base, target, out, rank=rank, dtype=torch.bfloat16, show_progress=False)
            t_ext = now() - t0
            h = apply_lora(model, out)
            got, _ = forward(model, x, 1)
            remove_lora(model, h)
            size = out.stat().st_size
            print(f"{rank:>5} {rep.energy:>8.4f} {size / 2**20:>9.2f} {size / bf16_bytes:>8.3f} "
                  f"{rel(got[0], ref[0]):>10.4f} {rel(got[1], ref[1]):>10.4f} {t_ext:>10.2f}")
        lora = root / "r32.safetensors"
        if lora.exists():
            t_apply, t_lora, t_plain = float("inf"), float("inf"), float("inf")
            for _ in range(3):  # interleaved, best of each: a shared machine's load drifts between measurements
                _, t = forward(model, x, 1)
                t_plain = min(t_plain, t)
                t0 = now()
                h = apply_lora(model, lora)
                t_apply = min(t_apply, now() - t0)
                _, t = forward(model, x, 1)
                t_lora = min(t_lora, t)
                remove_lora(model, h)
            print(f"apply a rank-32 LoRA (read + map + attach): {t_apply * 1e3:.0f} ms; forward with the LoRA added "
                  f"on the fly {t_lora * 1e3:.0f} ms vs {t_plain * 1e3:.0f} ms without ({t_lora / t_plain:.2f}x)")
    print("(shared CPU: best of repeats; ratios are from the same run)")


if __name__ == "__main__":
    main()
