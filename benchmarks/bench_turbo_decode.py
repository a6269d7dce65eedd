"""Turbo VAE decode on CPU: speed (pixel frames/s) and peak memory of the sliding window vs one pass.

    python benchmarks/bench_turbo_decode.py [--quick]

Speed: the tiny test config and the released topology ("release", widths 64..512) at a small
resolution, random weights, fp32 and bf16. Memory: each decode runs in a fresh subprocess; the
number is its peak RSS (VmHWM, reset right before decoding) minus its RSS at that moment (model and
latent built).
"One pass" is the decoder applied once to the whole padded clip, what an un-chunked decoder would
need; its output differs from the sliding window's (1 frame of context < receptive field).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

import torch  # noqa: E402

from _timing import now  # noqa: E402
from magihuman.models.turbo_vae import (  # noqa: E402
    RELEASE_TURBO_CONFIG,
    TINY_TURBO_CONFIG,
    TurboVAEDecoder,
    plan_chunks,
)

CONFIGS = {"tiny": TINY_TURBO_CONFIG, "release": RELEASE_TURBO_CONFIG}


def build(name: str, dtype: torch.dtype) -> TurboVAEDecoder:
    torch.manual_seed(0)
    return TurboVAEDecoder.from_config(CONFIGS[name], dtype=dtype).eval()


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """This process's own RSS high-water mark (VmHWM; ``ru_maxrss`` would include the parent's RSS at fork)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak_rss() -> None:
    """Restart the high-water mark at the current RSS (Linux >= 4.0); harmless where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def child(args: argparse.Namespace) -> None:
    """One decode in this process; print JSON with the peak RSS increase."""
    torch.set_num_threads(args.threads)
    model = build(args.config, torch.float32)
    z = torch.randn(1, 48, args.frames, args.lat_h, args.lat_w)
    reset_peak_rss()
    base = rss_bytes()
    t0 = now()
    with torch.no_grad():
        if args.mode == "chunked":
            video = model.decode(z)
        else:
            pad, _ = plan_chunks(args.frames, model.first_chunk_size, model.step_size)
            x = model.denormalize(z)
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], 2) if pad else x
            video = model.decoder(x, is_first_chunk=True)[:, :, : 4 * args.frames - 3]
    dt = now() - t0
    peak = peak_rss_bytes()
    print(json.dumps({"peak_increase": peak - base, "output_bytes": video.numel() * video.element_size(),
                      "seconds": dt, "frames": video.shape[2]}))


def run_child(mode: str, config: str, frames: int, lat_h: int, lat_w: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--config", config, "--frames", str(frames),
           "--lat-h", str(lat_h), "--lat-w", str(lat_w), "--threads", str(threads)]
    # Large blocks via mmap (returned to the OS on free) and one arena: RSS then tracks live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def speed(config: str, dtype: torch.dtype, frames: int, lat_h: int, lat_w: int, reps: int) -> tuple[float, float]:
    model = build(config, dtype)
    z = torch.randn(1, 48, frames, lat_h, lat_w)
    model.decode(z[:, :, : min(frames, 2)])  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = now()
        video = model.decode(z)
        best = min(best, now() - t0)
    return video.shape[2] / best, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller clips, one repetition")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", choices=["chunked", "oneshot"])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--lat-h", type=int, default=4)
    ap.add_argument("--lat-w", type=int, default=4)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    reps = 1 if args.quick else 3
    print(f"torch {torch.__version__}, {args.threads} CPU threads")
    print("\n== speed (sliding-window decode, random weights) ==")
    cases = [("tiny", 13, 4, 4), ("release", 8 if args.quick else 15, 4, 4)]
    for name, frames, h, w in cases:
        for dtype in (torch.float32, torch.bfloat16):
            fps, sec = speed(name, dtype, frames, h, w, reps)
            print(f"{name:8s} {str(dtype).split('.')[-1]:9s} latent {frames}x{h}x{w} -> "
                  f"{4 * frames - 3} frames {16 * h}x{16 * w}: {sec:7.2f} s, {fps:7.1f} frames/s")

    print("\n== peak memory: sliding window vs one pass (fresh subprocess each, fp32) ==")
    # The one pass grows with the clip, the window does not (release topology: 8 vs 29 latent frames).
    mem_cases = [("tiny", 29, 8, 8), ("release", 8, 4, 4), ("release", 15 if args.quick else 29, 4, 4)]
    for name, frames, h, w in mem_cases:
        res = {m: run_child(m, name, frames, h, w, args.threads) for m in ("chunked", "oneshot")}
        mib = {m: r["peak_increase"] / 2**20 for m, r in res.items()}
        out_mib = res["chunked"]["output_bytes"] / 2**20
        print(f"{name:8s} latent {frames}x{h}x{w} -> {res['chunked']['frames']} frames {16 * h}x{16 * w} "
              f"(output {out_mib:.0f} MiB): window {mib['chunked']:.0f} MiB "
              f"({res['chunked']['seconds']:.1f} s), one pass {mib['oneshot']:.0f} MiB "
              f"({res['oneshot']['seconds']:.1f} s), ratio one-pass/window {mib['oneshot'] / mib['chunked']:.2f}")


if __name__ == "__main__":
    main()
