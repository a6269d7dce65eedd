"""The memory estimator against measurement: peak RSS on the CPU of loading a DiT and running one forward.

For the tiny config and a mid config (hidden 1024, 8 layers, mm layers 0 and 7, gelu7 layer 0: the release
pattern scaled down) with bf16, fp8, Q8_0 and Q4_0 weights, each case runs in a fresh child process:
imports and a warm-up forward of another small model first (thread pools, kernel caches), then the baseline
RSS; the peak RSS is read from ``VmHWM`` (reset through ``/proc/self/clear_refs`` between phases):

- load: ``load_dit`` from the bf16 .safetensors (bf16; fp8 quantised while loading) or the converted .gguf;
  RSS after the load minus the baseline is the resident weights, compared with
  ``estimate.dit_weight_storage(cfg, fmt).total``;
- forward: one forward of ~1000 tokens (768 video + 13 audio + 219 text) in bf16 compute; its peak above the
  loaded RSS is the activations, compared with the larger of ``forward_activation_bytes(...)["peak_efficient"]``
  and ``decode_phase_bytes(...)`` (decoding a compact weight while less is live), as ``estimate()`` counts a stage;
- alloc: the same forward again with torch's profiler tracing tensor allocations (the CPU allocator's live bytes,
  without malloc's retained heap and oneDNN's runtime scratch), vs the same activation prediction;
- total: the peak of the forward above the baseline vs weights + activations (the estimator's stage peak without
  latents).

Each case runs ``--repeats`` times (median shown), and once more with ``MALLOC_MMAP_THRESHOLD_=131072`` ("mmap"
columns): glibc then maps every block above 128 KiB on its own and returns it when freed, so RSS follows the
live bytes; by default it serves blocks up to its dynamic threshold (up to 32 MiB) from its heap and keeps part of
what was freed, which is what a user sees (the default columns) but is not memory the run needs.

The load phase's own peak is printed too (GGUF files are memory-mapped: pages read while loading count in RSS
until the map is closed; the ``RssAnon`` column samples anonymous memory every 2 ms to show the part that is
not page cache). Prints numbers and ratios; gates nothing.

    python benchmarks/bench_estimate_memory.py [--frames 4] [--repeats 3] [--threads 2] [--configs tiny mid]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from magihuman.models.dit_config import DiTConfig  # noqa: E402

FORMATS = ("bf16", "fp8", "Q8_0", "Q4_0")


def mid_config() -> DiTConfig:
    return DiTConfig(num_layers=8, hidden_size=1024, head_dim=128, num_query_groups=2, mm_layers=[0, 7],
                     gelu7_layers=[0])


CONFIGS = {"tiny": lambda: DiTConfig.preset("tiny"), "mid": mid_config}

CHILD = r"""
import gc, json, sys, threading, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from _timing import now
import torch
torch.set_num_threads({threads})
from magihuman.checkpoints import load_dit
from magihuman.models.dit import DiTConfig, MagiHumanDiT

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

cfg = DiTConfig(**json.loads({config!r}))
t, hh, ww, n_audio, n_text = {geometry}
g = torch.Generator().manual_seed(0)
inputs = (torch.randn(1, 48, t, hh, ww, generator=g), torch.randn(1, n_audio, 64, generator=g),
          torch.randn(1, n_text, cfg.text_in_channels, generator=g), [n_text])
# warm-up on another small model: thread pools, kernel caches, allocator arenas
warm = MagiHumanDiT(DiTConfig.preset("tiny")).init_random_(1)
warm.set_compute_dtype(torch.bfloat16)
with torch.inference_mode():
    warm(torch.randn(1, 48, 2, 8, 8), torch.randn(1, 5, 64), torch.randn(1, 7, 64), [7])
del warm
gc.collect()
reset_peak()
base = status("VmRSS")
anon0, anon_peak, done = status("RssAnon"), [0], [False]
def sample():
    while not done[0]:
        anon_peak[0] = max(anon_peak[0], status("RssAnon"))
        time.sleep(0.002)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
model = load_dit({path!r}, dtype={dtype}, show_progress=False)
gc.collect()
done[0] = True
sampler.join()
load_peak = status("VmHWM")
loaded = status("VmRSS")
stored = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
model.set_compute_dtype(torch.bfloat16)
reset_peak()
with torch.inference_mode():
    t0 = now()
    out = model(*inputs)
    seconds = now() - t0
fwd_peak = status("VmHWM")
del out
# the same forward again, its tensor allocations traced (torch's CPU allocator; no malloc/oneDNN runtime overhead)
from torch.profiler import profile, ProfilerActivity
with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    model(*inputs)
live = alloc_peak = 0
for e in sorted(prof.events(), key=lambda e: e.time_range.start):
    live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
    alloc_peak = max(alloc_peak, live)
print(json.dumps(dict(base=base, load_peak=load_peak, loaded=loaded, fwd_peak=fwd_peak, stored=stored,
                      anon_load=anon_peak[0] - anon0, seconds=seconds, alloc_peak=alloc_peak)))
"""


def run_case(path: Path, fmt: str, cfg: DiTConfig, geometry: tuple, threads: int, env: dict | None = None) -> dict:
    dtype = {"bf16": "torch.bfloat16", "fp8": "torch.float8_e4m3fn"}.get(fmt, "None")
    code = CHILD.format(root=str(ROOT), bench=str(Path(__file__).resolve().parent), threads=threads,
                        config=json.dumps(cfg.to_dict()), geometry=geometry,
                        path=str(path), dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})))
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_case(runs: list[dict]) -> dict:
    """Per field, the median over the runs (RSS of a forward varies run to run with the heap's state)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def predicted(cfg: DiTConfig, fmt: str, length: int) -> dict:
    from magihuman import estimate as est

    storage = est.dit_weight_storage(cfg, fmt)
    act = est.forward_activation_bytes(cfg, length)["peak_efficient"]
    decoding = est.decode_phase_bytes(cfg, length, dequant=est.dequant_working_bytes(storage, torch.bfloat16, "cpu"))
    load = storage.total + est.dit_load_working_bytes(cfg, fmt, torch.bfloat16)  # from the bf16 file
    return dict(weights=storage.total, activations=max(act, decoding), load=load)


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=4, help="latent frames of the input (4: ~1000 tokens)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case (median shown)")
    ap.add_argument("--dir", default=None, help="where to write the temporary checkpoints (default: /tmp)")
    args = ap.parse_args()

    from magihuman.checkpoints import convert_dit, write_tiny_dit
    from magihuman.estimate import dit_weight_storage

    t, hh, ww, n_audio, n_text = geometry = (args.frames, 24, 32, 4 * args.frames - 3, 219)
    length = t * (hh // 2) * (ww // 2) + n_audio + n_text
    print(f"torch {torch.__version__}, {args.threads} threads; one forward of {length} tokens, bf16 compute; "
          "MiB above the child's baseline (after imports and a warm-up forward)")
    tmp = Path(tempfile.mkdtemp(prefix="magihuman_bench_mem_", dir=args.dir))
    rows = []
    try:
        for name in args.configs:
            cfg = CONFIGS[name]()
            src = write_tiny_dit(tmp / f"{name}_bf16.safetensors", config=cfg, layout="file", dtype=torch.bfloat16)
            files = {"bf16": src, "fp8": src}
            for fmt in args.formats:
                if fmt not in files:
                    files[fmt] = convert_dit(src, tmp / f"{name}_{fmt}.gguf", quant=fmt, show_progress=False)
            for fmt in args.formats:
                runs = [run_case(files[fmt], fmt, cfg, geometry, args.threads) for _ in range(args.repeats)]
                r = median_case(runs)
                m = run_case(files[fmt], fmt, cfg, geometry, args.threads, MMAP_ENV)
                assert all(x["stored"] == dit_weight_storage(cfg, fmt).total for x in runs), fmt
                rows.append((name, fmt, r, m, predicted(cfg, fmt, length)))
        print(f"{'':<13}{'---- weights ----':>25}{'---- activations ----':>25}{'- alloc -':>16}"
              f"{'------------ total ------------':>41}{'------ load ------':>27}")
        print(f"{'config':<6}{'format':<7}{'RSS':>9}{'pred':>9}{'ratio':>7}{'RSS':>9}{'pred':>9}{'ratio':>7}"
              f"{'traced':>9}{'ratio':>7}{'RSS':>9}{'mmap':>9}{'pred':>9}{'ratio':>7}{'mmap':>7}"
              f"{'peak':>9}{'pred':>9}{'RssAnon':>9}")
        for name, fmt, r, m, p in rows:
            pt = p["weights"] + p["activations"]
            weights, act, total = r["loaded"] - r["base"], r["fwd_peak"] - r["loaded"], r["fwd_peak"] - r["base"]
            total_m = m["fwd_peak"] - m["base"]
            print(f"{name:<6}{fmt:<7}{mib(weights)}{mib(p['weights'])}{weights / p['weights']:7.2f}"
                  f"{mib(act)}{mib(p['activations'])}{act / p['activations']:7.2f}"
                  f"{mib(r['alloc_peak'])}{r['alloc_peak'] / p['activations']:7.2f}"
                  f"{mib(total)}{mib(total_m)}{mib(pt)}{total / pt:7.2f}{total_m / pt:7.2f}"
                  f"{mib(r['load_peak'] - r['base'])}{mib(p['load'])}{mib(r['anon_load'])}")
        print(f"median of {args.repeats} runs. weights: RSS after load vs dit_weight_storage().total (the model's "
              "own tensor bytes equal it exactly, checked); activations: forward peak above the loaded model vs "
              "max(forward_activation_bytes, decode_phase_bytes); traced: peak of live tensor bytes in a second, "
              "profiled forward vs the same; total: forward peak above the baseline vs weights + activations (mmap: "
              "the run with MALLOC_MMAP_THRESHOLD_=131072); load: peak while loading (GGUF: memory-mapped file pages "
              "included) vs weights + dit_load_working_bytes, RssAnon: anonymous memory peak while loading (2 ms "
              "samples)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
