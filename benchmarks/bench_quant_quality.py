"""Weight formats on a mid-size DiT: output error vs the bf16-weights model, CPU forward time, file sizes.

Mid config: hidden 1280, 8 layers, head_dim 128, 2 kv groups, mm layers 0 and 7 and gelu7 layer 0 (the release
pattern scaled down: mm in the first and last tenth, gelu7 first, swiglu7 elsewhere; the release's awkward widths
scaled down too: qkv 1802 rows, swiglu up 6824 rows, down_proj 3412 wide, whose rows are not whole GGUF blocks and
are stored zero-padded as the release's 13652-wide ones are); random weights N(0, 0.02) written as a bf16
.safetensors (block linears bf16, rest fp32). One sample of 1000 tokens (768 video + 13 audio + 219 text). Each
format is made from that file as a user would: fp8 quantised while loading (``--dtype fp8``), the GGUF ones with
``convert_dit(..., quant=...)`` (Q4_K through the simple encoder ``quant.gguf.encode_q4_k``). The relative L2
video errors printed here are the registry's ``rel_error`` (``magihuman/storage/registry.py``), which the planner
ranks formats by.

- error: video and audio velocity vs the bf16-weights model, both computed in fp32 (the weights are the only
  difference): relative L2 ``|o - r| / |r|`` and relative max ``max|o - r| / max|r|``; the bf16-compute row shows
  what bf16 matmuls alone change (the official numerics) for scale. Gate of the issue: Q8_0 <= 2x fp8.
- time: forward in ``--compute-dtype`` (default auto: the engine's choice for this CPU, bf16 where its bf16
  matmuls are fast, else fp32), warm-up then the best of ``--repeats`` rounds, formats interleaved in each round (a shared CPU drifts); ratio to bf16 weights = the cost
  of decoding the weights per use; "decode ms": decoding every block linear once (``BlockLinear.decoded_weight``,
  what one forward decodes) without the matmuls.
- size: the converted file vs the bf16 .safetensors (fp8 has no file: its in-memory bytes); the estimator's
  ``dit_weight_storage`` for the same.

Prints numbers and ratios; gates nothing.

    python benchmarks/bench_quant_quality.py [--repeats 3] [--threads 2] [--compute-dtype auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman.device import COMPUTE_DTYPE_NAMES, resolve_compute_dtype  # noqa: E402
from magihuman.models.dit_config import DiTConfig  # noqa: E402
from magihuman.storage import FP8, GGUF, STORAGES, load_choices  # noqa: E402

# The compact storages a loader keeps ("file" is a policy, plain dtypes are the reference), in the registry's order:
LOADED = tuple(n for n in load_choices() if n in STORAGES and STORAGES[n].kind == FP8)       # quantised while loading
CONVERTED = tuple(n for n in load_choices() if n in STORAGES and STORAGES[n].kind == GGUF)  # written by convert_dit
FORMATS = LOADED + CONVERTED


def mid_config() -> DiTConfig:
    return DiTConfig(num_layers=8, hidden_size=1280, head_dim=128, num_query_groups=2, mm_layers=[0, 7],
                     gelu7_layers=[0])


def inputs(cfg: DiTConfig):
    g = torch.Generator().manual_seed(0)
    t, hh, ww, n_audio, n_text = 4, 24, 32, 13, 219  # 768 video + 13 audio + 219 text = 1000 tokens
    return (torch.randn(1, 48, t, hh, ww, generator=g), torch.randn(1, n_audio, 64, generator=g),
            torch.randn(1, n_text, cfg.text_in_channels, generator=g), [n_text])


def forward(model, x, dtype: torch.dtype):
    model.set_compute_dtype(dtype)
    with torch.inference_mode():
        return model(*x)


def errors(out, ref) -> list[float]:
    """rel L2 and rel max of video, then audio."""
    vals = []
    for o, r in zip(out, ref):
        d = (o - r).float()
        vals += [float(d.norm() / r.norm()), float(d.abs().max() / r.abs().max())]
    return vals


def decode_all(model, dtype: torch.dtype) -> None:
    """Decode every block linear once, as one forward does, without the matmuls."""
    for mod in model.block_linears():
        mod.decoded_weight(dtype)


def stored_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--dir", default=None, help="where to write the temporary files (default: /tmp)")
    ap.add_argument("--compute-dtype", default="auto", choices=["auto", *COMPUTE_DTYPE_NAMES],
                    help="the timed forwards' compute dtype (auto: the engine's choice for this CPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    timed = resolve_compute_dtype(args.compute_dtype, "cpu")

    from magihuman.checkpoints import convert_dit, load_dit, write_tiny_dit
    from magihuman.estimate import dit_weight_storage

    cfg = mid_config()
    x = inputs(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="magihuman_bench_quant_", dir=args.dir))
    try:
        src = write_tiny_dit(tmp / "mid_bf16.safetensors", config=cfg, layout="file", dtype=torch.bfloat16, seed=7)
        files = {"bf16": src}
        for fmt in CONVERTED:
            files[fmt] = convert_dit(src, tmp / f"mid_{fmt}.gguf", quant=fmt, show_progress=False)
        models = {"bf16": load_dit(src, storage="bf16", show_progress=False)}
        for fmt in LOADED:
            models[fmt] = load_dit(src, storage=fmt, show_progress=False)
        for fmt in CONVERTED:
            models[fmt] = load_dit(files[fmt], show_progress=False)
            kinds = {m.storage.name for m in models[fmt].block_linears()}
            assert kinds == {fmt}, f"{fmt}: block linears kept as {kinds}"  # every one, down_proj included
        load = "load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {load}; mid config (hidden "
              f"{cfg.hidden_size}, {cfg.num_layers} layers, mm {cfg.mm_layers}, gelu7 {cfg.gelu7_layers}), "
              "1000 tokens, random weights")

        ref = forward(models["bf16"], x, torch.float32)
        rows = {fmt: errors(forward(models[fmt], x, torch.float32), ref) for fmt in FORMATS}
        bf16_compute = errors(forward(models["bf16"], x, torch.bfloat16), ref)

        print("\noutput error vs the bf16-weights model (fp32 compute)")
        print(f"{'weights':<22}{'video rel L2':>14}{'video rel max':>15}{'audio rel L2':>14}{'audio rel max':>15}")
        for fmt in FORMATS:
            print(f"{fmt:<22}" + "".join(f"{v:>14.2e}" if i % 2 == 0 else f"{v:>15.2e}"
                                         for i, v in enumerate(rows[fmt])))
        print(f"{'(bf16, bf16 compute)':<22}" + "".join(f"{v:>14.2e}" if i % 2 == 0 else f"{v:>15.2e}"
                                                    for i, v in enumerate(bf16_compute)))
        gate = all(rows["Q8_0"][i] <= 2 * rows["fp8"][i] for i in (0, 2))
        print(f"gate Q8_0 rel L2 <= 2x fp8 (video, audio): {'pass' if gate else 'FAIL'} "
              f"({rows['Q8_0'][0] / rows['fp8'][0]:.2f}x, {rows['Q8_0'][2] / rows['fp8'][2]:.2f}x)")

        order = ["bf16", *FORMATS]
        best = {fmt: float("inf") for fmt in order}
        decode = {fmt: float("inf") for fmt in order}
        for fmt in order:  # warm-up (kernel caches, allocator)
            forward(models[fmt], x, timed)
        for _ in range(args.repeats):
            for fmt in order:
                t0 = now()
                forward(models[fmt], x, timed)
                best[fmt] = min(best[fmt], now() - t0)
                t0 = now()
                decode_all(models[fmt], timed)
                decode[fmt] = min(decode[fmt], now() - t0)

        base_size = src.stat().st_size
        print(f"\nCPU forward ({str(timed).removeprefix('torch.')} compute, best of {args.repeats}) and size")
        print(f"{'weights':<9}{'forward ms':>11}{'vs bf16':>9}{'decode ms':>10}{'file MiB':>10}{'vs bf16':>9}"
              f"{'estimator MiB':>15}{'in memory MiB':>15}")
        for fmt in order:
            size = files[fmt].stat().st_size if fmt in files else None  # formats loaded from bf16 have no file
            mem = stored_bytes(models[fmt])
            size_txt = f"{size / 2**20:>10.1f}{size / base_size:>9.2f}" if size else f"{'(none)':>10}{'':>9}"
            print(f"{fmt:<9}{best[fmt] * 1e3:>11.0f}{best[fmt] / best['bf16']:>9.2f}{decode[fmt] * 1e3:>10.0f}"
                  f"{size_txt}{dit_weight_storage(cfg, fmt).total / 2**20:>15.1f}{mem / 2**20:>15.1f}")
        full = dit_weight_storage(DiTConfig.preset("base"), "bf16").total
        print("\nrelease DiT (15.3 B parameters) by the estimator: " + ", ".join(
            f"{fmt} {dit_weight_storage(DiTConfig.preset('base'), fmt).total / 2**30:.1f} GiB "
            f"({dit_weight_storage(DiTConfig.preset('base'), fmt).total / full:.2f}x)" for fmt in order))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
