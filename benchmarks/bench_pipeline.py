"""Per-stage wall times of the generation pipeline on this machine (CPU by default).

    python benchmarks/bench_pipeline.py                      # tiny preset + mid preset
    python benchmarks/bench_pipeline.py --only tiny
    python benchmarks/bench_pipeline.py --mid-hidden 1024 --mid-layers 8 --seconds 2 --threads 2

tiny: the tiny checkpoints (written to a temp folder), loaded through the real loaders, 128x64.
mid:  a random DiT (hidden 1024 x 8 layers = 133 M parameters by default; --mid-hidden 1536 gives 298 M;
      heads of 128, real 48/64-channel latents) at 448x256 for ``--seconds`` with the distilled 8-step sampler, so the
      DiT cost per token is visible at the official base size; the tiny text encoder and VAEs around it.
Numbers are printed, never asserted; they vary with load on shared machines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman import media  # noqa: E402
from magihuman import pipeline as P  # noqa: E402
from magihuman.checkpoints import load_dit  # noqa: E402
from magihuman.cli import StageTimer  # noqa: E402
from magihuman.loaders import load_audio_vae, load_turbo_vae  # noqa: E402
from magihuman.models.dit import MagiHumanDiT  # noqa: E402
from magihuman.models.dit_config import DiTConfig  # noqa: E402
from magihuman.models.text_encoder import T5GemmaEncoder  # noqa: E402
from magihuman.tiny import TINY_FILES, write_tiny_models  # noqa: E402


def tokens(latent: P.AVLatent, text_len: int) -> int:
    _, _, t, h, w = latent.video.shape
    return t * (h // 2) * (w // 2) + latent.num_frames + text_len


def run(name: str, dit, models: Path, width: int, height: int, seconds: float, steps: int, out: Path) -> None:
    timer = StageTimer()
    with timer("load text encoder"):
        te = T5GemmaEncoder.from_pretrained(models / TINY_FILES["text_encoder"], dtype=torch.float32)
    with timer("text encode"):
        cond = P.encode_prompt(te, "A man smiles and says hello.", None)
    with timer("load VAEs"):
        turbo = load_turbo_vae(None, models / TINY_FILES["turbo_vae"], dtype=torch.float32)
        audio_vae = load_audio_vae(models / TINY_FILES["audio_vae"])
    latent = P.empty_latents(width, height, seconds)
    step_times = []
    last = [now()]

    def tick(i, n, x0):
        t = now()
        step_times.append(t - last[0])
        last[0] = t

    with timer("DiT"):
        last[0] = now()
        latent = P.denoise(dit, latent, cond, sampler="distilled", steps=steps, seed=0, callback=tick)
    with timer("decode video"):
        frames = P.decode_video(turbo, latent)
    with timer("decode audio"):
        wave, rate = P.decode_audio(audio_vae, latent)
    with timer("mux"):
        media.write_mp4(out, frames, fps=P.FPS, audio=wave, sample_rate=rate)
    params = sum(p.numel() for p in dit.parameters())
    n_tok = tokens(latent, cond.lens[0])
    print(f"\n== {name}: DiT {params / 1e6:.1f} M params, {width}x{height}, {seconds} s "
          f"({latent.num_frames} frames, {latent.latent_frames} latent frames), {n_tok} tokens/sample, "
          f"{steps} steps, threads {torch.get_num_threads()}")
    print(f"DiT step: first {step_times[0]:.3f} s, median of the rest "
          f"{sorted(step_times[1:])[len(step_times[1:]) // 2] if len(step_times) > 1 else float('nan'):.3f} s")
    print(timer.table())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiny", "mid"], default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--mid-hidden", type=int, default=1024)
    ap.add_argument("--mid-layers", type=int, default=8)
    ap.add_argument("--mid-steps", type=int, default=8)
    ap.add_argument("--mid-dtype", choices=["fp32", "bf16"], default="fp32", help="block linears + compute")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = now()
        write_tiny_models(tmp / "models")
        print(f"tiny models written in {now() - t0:.2f} s")
        models = tmp / "models"
        if args.only in (None, "tiny"):
            dit = load_dit(models / TINY_FILES["distill"], dtype=torch.float32, show_progress=False)
            dit.set_compute_dtype(torch.float32)
            run("tiny", dit, models, 128, 64, args.seconds, 8, tmp / "tiny.mp4")
        if args.only in (None, "mid"):
            h = args.mid_hidden
            layers = args.mid_layers
            cfg = DiTConfig(num_layers=layers, hidden_size=h, head_dim=128, num_query_groups=max(1, h // 128 // 4),
                            text_in_channels=64, mm_layers=[0, layers - 1], gelu7_layers=[0],
                            local_attn_layers=[])
            dt = torch.float32 if args.mid_dtype == "fp32" else torch.bfloat16
            dit = MagiHumanDiT(cfg, dtype=dt).eval()
            dit.set_compute_dtype(dt)
            dit.variant = "distill"
            run(f"mid (hidden {h} x {layers} layers, {args.mid_dtype})", dit, models, 448, 256, args.seconds,
                args.mid_steps, tmp / "mid.mp4")


if __name__ == "__main__":
    main()
