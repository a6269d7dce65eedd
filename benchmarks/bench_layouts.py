"""What loading a DiT from another tool's layout costs: Wan2GP bf16 (pieces concatenated while reading) and
optimum-quanto int8 (dequantised while reading) against the same weights in the official layout.

Writes a synthetic checkpoint (default hidden 2048, 6 layers, two of them multi-modal) in the three layouts under a
temp dir, loads each with ``load_dit(storage="bf16")`` in a fresh child process and prints the load time and the
child's peak RSS (VmHWM) above its pre-load RSS, next to the model's bytes. Prints numbers; gates nothing.

    python benchmarks/bench_layouts.py [--hidden 2048] [--layers 6] [--storage bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import torch
from _timing import now
from magihuman.checkpoints import load_dit, open_checkpoint

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
src = open_checkpoint({path!r})  # headers only
base = status("VmRSS")
t0 = now()
model = load_dit({path!r}, storage={storage!r}, show_progress=False)
seconds = now() - t0
model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({{"extra": status("VmHWM") - base, "seconds": seconds, "model_bytes": model_bytes,
                  "file_bytes": src.total_bytes, "layout": model.load_info["layout"]}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--storage", default="bf16")
    args = ap.parse_args()

    import safetensors.torch

    from magihuman.checkpoints import write_tiny_dit
    from magihuman.models.dit_config import DiTConfig
    from magihuman.weights.safetensors_io import write_file
    from tests.layout_fixtures import quanto_int8, to_wan2gp

    n = args.layers
    cfg = DiTConfig(num_layers=n, hidden_size=args.hidden, head_dim=128, num_query_groups=4, text_in_channels=512,
                    mm_layers=[0, n - 1], gelu7_layers=[0])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        official = write_tiny_dit(tmp / "official.safetensors", config=cfg, layout="file", dtype=torch.bfloat16)
        sd = safetensors.torch.load_file(official)
        write_file(tmp / "wan2gp_bf16.safetensors", to_wan2gp(sd, cfg, torch.bfloat16))
        q, meta = quanto_int8(to_wan2gp(sd, cfg, torch.bfloat16))
        write_file(tmp / "wan2gp_quanto_int8.safetensors", q, meta)
        del sd, q
        print(f"hidden {args.hidden}, {n} layers (multi-modal: {cfg.mm_layers}), block linears -> {args.storage}")
        for name in ("official", "wan2gp_bf16", "wan2gp_quanto_int8"):
            path = tmp / f"{name}.safetensors"
            code = CHILD.format(root=str(ROOT), bench=str(Path(__file__).resolve().parent), path=str(path),
                                storage=args.storage)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {name:20s} layout {r['layout']:14s} file {r['file_bytes'] / 2**20:7.1f} MiB  load "
                  f"{r['seconds']:6.2f} s  peak RSS above start {r['extra'] / 2**20:7.1f} MiB "
                  f"(model {r['model_bytes'] / 2**20:7.1f} MiB)")


if __name__ == "__main__":
    main()
