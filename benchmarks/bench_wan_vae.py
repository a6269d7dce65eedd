"""Wan2.2 VAE decode: frames/s for the tiny and a mid-size config, and peak memory tiled vs untiled.

Each measurement runs in its own child process; the number reported is its peak RSS during the
decode (VmHWM, reset right before decoding) minus the RSS at that moment (model and input already
allocated). Random weights: speed and memory do not depend on the values.

    python benchmarks/bench_wan_vae.py            # tiny + mid, a few minutes on 2 busy CPU cores
    python benchmarks/bench_wan_vae.py --release  # also the release config on one small clip (slow)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MID_CONFIG = {"dim": 64, "dec_dim": 96, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
              "temperal_downsample": [False, True, True]}


def _child(spec: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from _timing import now
    from bench_turbo_decode import peak_rss_bytes, reset_peak_rss, rss_bytes
    from magihuman.models.video_vae import (RELEASE_WAN_VAE_CONFIG, TINY_WAN_VAE_CONFIG, WanVAE,
                                            init_random_wan_vae)

    torch.set_num_threads(spec["threads"])
    cfg = {"tiny": TINY_WAN_VAE_CONFIG, "mid": MID_CONFIG, "release": RELEASE_WAN_VAE_CONFIG}[spec["config"]]
    model = init_random_wan_vae(WanVAE.from_config(cfg, dtype=torch.float32), 0).eval()
    t, h, w = spec["latent"]
    z = torch.randn(1, 48, t, h, w, generator=torch.Generator().manual_seed(0))
    tile = tuple(spec["tile"]) if spec["tile"] else None
    with torch.no_grad():
        if spec["warmup"]:
            model.decode(z[:, :, :1, : min(h, 4), : min(w, 4)])
        reset_peak_rss()  # the random init may have peaked higher than the decode will
        base = rss_bytes()
        start, cpu0 = now(), time.process_time()
        video = model.decode(z, tile=tile, overlap=spec["overlap"])
        seconds, cpu = now() - start, time.process_time() - cpu0
    peak = peak_rss_bytes()
    return {"frames": video.shape[2], "seconds": seconds, "fps": video.shape[2] / seconds, "cpu_s": cpu,
            "pixels": f"{video.shape[-1]}x{video.shape[-2]}", "peak_extra_mb": max(peak - base, 0) / 2**20,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--release", action="store_true", help="also time the release config (700M params, slow)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    base = {"threads": args.threads, "warmup": True, "tile": None, "overlap": 0}
    print("== decode speed (untiled, fp32, %d threads)" % args.threads)
    speed = {}
    runs = [("tiny", (3, 8, 8)), ("mid", (3, 8, 8))] + ([("release", (2, 8, 8))] if args.release else [])
    for name, lat in runs:
        r = run({**base, "config": name, "latent": lat})
        speed[name] = r
        print(f"  {name:8s} {r['params_m']:7.1f}M params  latent {lat} -> {r['frames']} frames {r['pixels']}: "
              f"{r['seconds']:.2f} s wall ({r['cpu_s']:.2f} s CPU), {r['fps']:.2f} frames/s")
    print(f"  tiny / mid speed ratio (CPU time): {speed['mid']['cpu_s'] / speed['tiny']['cpu_s']:.1f}x")

    print("== peak memory during decode, mid config, latent (2, 24, 32) -> 5 frames 512x384")
    mem = {}
    # 2x2 tiles of 13x17 latents sharing 2 columns/rows: 1.15x the untiled area
    for label, tile, overlap in [("untiled", None, 0), ("tiles 13x17 ov 2", (13, 17), 2)]:
        r = run({**base, "config": "mid", "latent": (2, 24, 32), "tile": tile, "overlap": overlap})
        mem[label] = r
        print(f"  {label:18s} peak +{r['peak_extra_mb']:7.0f} MB  {r['seconds']:.2f} s wall ({r['cpu_s']:.2f} s CPU)")
    u = mem["untiled"]["peak_extra_mb"]
    for label, r in mem.items():
        if label != "untiled":
            print(f"  {label}: memory {r['peak_extra_mb'] / u:.2f}x untiled, CPU time {r['cpu_s'] / mem['untiled']['cpu_s']:.2f}x")


if __name__ == "__main__":
    main()
