"""CFG batching: two batch-1 DiT passes (prompt, negative prompt) vs one batch-2 pass.

Prints the time of one guided step each way, their ratio, and the largest difference between the
guided velocities (every batch row is its own sequence, so they must agree to rounding).
Random weights, a scaled-down DiT and a small latent by default; wall time never gates anything.

    python benchmarks/bench_cfg_batching.py                       # defaults: ~1 s of 448x256 video
    python benchmarks/bench_cfg_batching.py --hidden 1024 --layers 4 --seconds 2 --compute-dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

try:
    import magihuman  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.sampling import AUDIO_GUIDANCE_SCALE, cfg_combine, make_generator, randn_like_gen, video_guidance_scale

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_PAD = 640  # official T5Gemma target length


def build_inputs(args, config: DiTConfig, gen: torch.Generator):
    num_frames = args.seconds * 25 + 1
    latent_frames = (num_frames - 1) // 4 + 1
    lat_h, lat_w = args.height // 16 // 2 * 2, args.width // 16 // 2 * 2
    video = randn_like_gen(torch.empty(1, config.video_in_channels // 4, latent_frames, lat_h, lat_w), gen)
    audio = randn_like_gen(torch.empty(1, num_frames, config.audio_in_channels), gen)
    text = randn_like_gen(torch.empty(2, TEXT_PAD, config.text_in_channels), gen)
    text[0, args.prompt_tokens:] = 0  # zero padding past the real length, as the official encoder path
    text[1, args.negative_tokens:] = 0
    return video, audio, text, [args.prompt_tokens, args.negative_tokens]


def guided(v_cond, a_cond, v_uncond, a_uncond, t):
    return (cfg_combine(v_cond, v_uncond, video_guidance_scale(t)),
            cfg_combine(a_cond, a_uncond, AUDIO_GUIDANCE_SCALE))


@torch.inference_mode()
def step_sequential(model, video, audio, text, lens, t):
    v_c, a_c = model(video, audio, text[:1], lens[:1])
    v_u, a_u = model(video, audio, text[1:], lens[1:])
    return guided(v_c, a_c, v_u, a_u, t)


@torch.inference_mode()
def step_batched(model, video, audio, text, lens, t):
    v, a = model(video.expand(2, -1, -1, -1, -1), audio.expand(2, -1, -1), text, lens)
    return guided(v[:1], a[:1], v[1:], a[1:], t)


def timed_interleaved(fns, repeats: int):
    """Best and median time of each fn, alternating them so machine load hits both alike."""
    outs = [fn() for fn in fns]  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = now()
            outs[i] = fn()
            times[i].append(now() - start)
    return [(min(ts), statistics.median(ts)) for ts in times], outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seconds", type=int, default=1)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=120)
    p.add_argument("--negative-tokens", type=int, default=330)
    p.add_argument("--compute-dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    layers = args.layers
    config = DiTConfig(num_layers=layers, hidden_size=args.hidden, head_dim=args.head_dim,
                       num_query_groups=args.kv_heads, mm_layers=sorted({0, layers - 1}), gelu7_layers=[0])
    model = MagiHumanDiT(config, compute_dtype=DTYPES[args.compute_dtype]).eval()
    gen = make_generator(args.seed)
    video, audio, text, lens = build_inputs(args, config, gen)
    t = 999
    tokens = video.shape[2] * (video.shape[3] // 2) * (video.shape[4] // 2) + audio.shape[1]

    ((t_seq, m_seq), (t_bat, m_bat)), ((v_seq, a_seq), (v_bat, a_bat)) = timed_interleaved(
        [lambda: step_sequential(model, video, audio, text, lens, t),
         lambda: step_batched(model, video, audio, text, lens, t)], args.repeats)

    print(f"DiT: {layers} layers, hidden {args.hidden}, compute {args.compute_dtype}, threads {torch.get_num_threads()}")
    print(f"sequence: {tokens} video+audio tokens + text {lens} (prompt, negative)")
    print(f"two batch-1 passes : best {t_seq * 1e3:9.1f} ms, median {m_seq * 1e3:9.1f} ms / guided step")
    print(f"one batch-2 pass   : best {t_bat * 1e3:9.1f} ms, median {m_bat * 1e3:9.1f} ms / guided step")
    print(f"batched / sequential time ratio (best): {t_bat / t_seq:.3f}")
    print(f"max |guided velocity difference|: video {(v_seq - v_bat).abs().max().item():.3g}, "
          f"audio {(a_seq - a_bat).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
