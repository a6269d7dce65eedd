"""Peak host RAM of streamed DiT loading: an fp32 sharded checkpoint -> a bf16 model.

Writes a synthetic fp32 checkpoint of a few GB in the official layout (index + shards) under a temp
dir, loads it with ``load_dit(dtype=bf16)`` in a fresh child process, and prints the child's peak
RSS above its pre-load baseline divided by the bf16 model size (goal: <= 1.15x; the released
distill/SR folders are fp32, ~61 GB, for a ~31 GB bf16 model). ``--naive`` also measures the usual
``safetensors.load_file`` + ``load_state_dict`` path for comparison. Deletes the checkpoint after.
Prints numbers; gates nothing.

    python benchmarks/bench_load.py [--hidden 2048] [--layers 10] [--shards 4] [--zst] [--naive]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402

CHILD = r"""
import json, resource, sys
import psutil, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from _timing import now
from magihuman.checkpoints import load_dit, open_checkpoint, resolve_config
from magihuman.models.dit import MagiHumanDiT
proc = psutil.Process()
path, mode = {path!r}, {mode!r}
src = open_checkpoint(path)  # headers only
base = proc.memory_info().rss
t0 = now()
if mode == "stream":
    model = load_dit(path, dtype=torch.bfloat16, show_progress=False)
else:  # the usual way: whole state dict in fp32, then copy into a bf16 model
    import safetensors.torch
    sd = {{}}
    for f in src.files:
        sd.update(safetensors.torch.load_file(f))
    model = MagiHumanDiT(resolve_config(src, "distill")[0], dtype=torch.bfloat16)
    model.load_state_dict(sd, strict=True)
    del sd
seconds = now() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({{"base": base, "peak": peak, "model_bytes": model_bytes, "seconds": seconds,
                  "file_bytes": src.total_bytes}}))
"""


def measure(path: Path, mode: str) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(Path(__file__).resolve().parent), path=str(path), mode=mode)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--zst", action="store_true", help="write .zst shards (slower to write)")
    ap.add_argument("--naive", action="store_true", help="also measure load_file + load_state_dict")
    ap.add_argument("--dir", default=None, help="where to write the temporary checkpoint (default: /tmp)")
    args = ap.parse_args()

    from magihuman.checkpoints import write_tiny_dit
    from magihuman.models.dit_config import DiTConfig

    cfg = DiTConfig(num_layers=args.layers, hidden_size=args.hidden, head_dim=128, num_query_groups=8,
                    mm_layers=[0, args.layers - 1], gelu7_layers=[0])
    tmp = Path(tempfile.mkdtemp(prefix="magihuman_bench_load_", dir=args.dir))
    try:
        t0 = now()
        path = write_tiny_dit(tmp / "distill", config=cfg, dtype=torch.float32, shards=args.shards,
                              zst=args.zst, metadata=False)
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"wrote fp32 checkpoint: {size / 2**30:.2f} GiB in {args.shards} shard(s){' (.zst)' if args.zst else ''}"
              f", {now() - t0:.1f} s  [hidden {args.hidden}, {args.layers} layers]")
        for mode in (["stream", "naive"] if args.naive else ["stream"]):
            r = measure(path, mode)
            extra = r["peak"] - r["base"]
            print(f"{mode:>7}: bf16 model {r['model_bytes'] / 2**30:.2f} GiB | child RSS before load "
                  f"{r['base'] / 2**30:.2f} GiB, peak {r['peak'] / 2**30:.2f} GiB | peak above baseline / model = "
                  f"{extra / r['model_bytes']:.3f}x | {r['file_bytes'] / 2**30 / r['seconds']:.2f} GiB/s read "
                  f"({r['seconds']:.1f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
