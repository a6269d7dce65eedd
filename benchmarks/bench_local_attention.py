"""Local (frame-window) attention of the 1080p SR layers: dense call with an L x L mask vs frame-block
windows (no L x L mask) at several block sizes, on an SR-like shape scaled down. Prints time, the
largest mask each path builds, and agreement with the mask path; gates nothing.

    python benchmarks/bench_local_attention.py [--frames 21] [--frf 3] [--grid 12x20] [--dtype bf16] [--threads N]

Real 1080p SR: ~32 latent frames x 34x60 tokens (65k tokens), frf 11: the L x L mask alone is ~4 GB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman import attention as A
from magihuman.packing import SequenceLayout, attention_mask, local_attention_allowed


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def best_of(fn, repeats):
    """Best of ``repeats`` timed calls after a warm-up (``repeats`` 0: the one call, timed)."""
    t0 = now()
    fn()
    best = now() - t0 if repeats == 0 else float("inf")
    for _ in range(repeats):
        t0 = now()
        fn()
        best = min(best, now() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--frf", type=int, default=3)
    ap.add_argument("--grid", default="12x20", help="video token grid h x w per latent frame")
    ap.add_argument("--audio", type=int, default=81)
    ap.add_argument("--text", type=int, default=100)
    ap.add_argument("--heads", default="8/2", help="query/kv heads")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--blocks", default="1,2,3,7")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--skip-mask", action="store_true", help="window path only (real 1080p sizes: the mask is ~4 GB)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gh, gw = (int(s) for s in args.grid.split("x"))
    hq, hkv = (int(s) for s in args.heads.split("/"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    layout = SequenceLayout((args.frames, gh, gw), args.audio, (args.text,))
    n, nv, d = layout.length, layout.num_video, 128
    g = torch.Generator().manual_seed(0)
    # [B, L, H, D] transposed like the DiT does
    q = torch.randn(1, n, hq, d, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(1, n, hkv, d, generator=g).to(dtype).transpose(1, 2)
    v = torch.randn(1, n, hkv, d, generator=g).to(dtype).transpose(1, 2)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.dtype}; {args.frames} latent frames x "
          f"{gh}x{gw} = {nv} video + {args.audio} audio + {args.text} text = {n} tokens; frf {args.frf}; "
          f"{hq}/{hkv} heads of {d}")
    print(f"inputs q/k/v {sum(x.numel() * x.element_size() for x in (q, k, v)) / 2**20:.0f} MiB; "
          f"an L x L bool mask would be {n * n / 2**20:.0f} MiB; peak RSS so far {peak_rss_mib():.0f} MiB")
    ref, sec_mask = None, float("nan")
    if not args.skip_mask:
        mask = attention_mask(layout, local_attention_allowed(layout, args.frf), None)
        sec_mask = best_of(lambda: A.attention(q, k, v, mask), args.repeats)
        ref = A.attention(q, k, v, mask).float()
        print(f"mask path   : {sec_mask * 1e3:9.1f} ms   mask {mask.numel() / 2**20:8.1f} MiB (L x L bool)")
        del mask
        sec_full = best_of(lambda: A.attention(q, k, v, None), args.repeats)
        print(f"no window   : {sec_full * 1e3:9.1f} ms   (full attention, for scale)")

    # largest mask the window path builds, recorded through a backend wrapper
    sizes = []

    def recording(q_, k_, v_, m_=None):
        sizes.append(0 if m_ is None else m_.numel())
        return A.sdpa_attention(q_, k_, v_, m_)

    A.register_attention_backend("bench_recording", recording)
    for block in (int(s) for s in args.blocks.split(",")):
        win = A.LocalWindow(nv, gh * gw, args.frf, block)
        sec = best_of(lambda: A.local_window_attention(q, k, v, win), args.repeats)
        sizes.clear()
        out = A.local_window_attention(q, k, v, win, backend="bench_recording").float()
        err = float("nan") if ref is None else float((out - ref).abs().max() / ref.abs().max())
        print(f"window b={block:<3d}: {sec * 1e3:9.1f} ms   largest mask {max(sizes) / 2**20:8.2f} MiB   "
              f"{sec_mask / sec:5.2f}x vs mask path   max rel diff {err:.1e}   peak RSS {peak_rss_mib():.0f} MiB")
    print("(shared CPU: best of repeats; ratios are from the same run)")


if __name__ == "__main__":
    main()
