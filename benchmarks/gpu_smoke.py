"""GPU smoke test: what the CPU tests prove by building the condition, asserted on a real GPU in one command.

    python benchmarks/gpu_smoke.py [--device cuda:0] [--comfyui DIR --harness RUN_WORKFLOW_PY] [--skip-comfyui]

Each check asserts (a failure prints what was measured and the run exits 1); without CUDA the script runs what it
can on the CPU and prints every skipped check with the reason (exit 0). About 2-4 minutes on one H100. Checks:

1. versions: torch, CUDA, the GPU and its capability; flash (torch SDPA, flash_attn) and sage availability.
2. fp8 linear per activation scaling (tensor, token) and output dtype (bf16, fp16, fp32) against the dequantised
   matmul (cosine > 0.999), and the share of block-linear FLOPs that run in fp8 on a DiT with the release's awkward
   widths scaled down (hidden 1280: qkv 1802, up 6824, down 3412 wide): every one of them.
3. attention: each kernel (sdpa, flash, sage, math) against math at L=1024 (GQA 40:8, head_dim 128); peak memory of
   sdpa at L=8192 with GQA (with and without a mask) well below the L x L score matrix of the math kernel.
4. the tiny DiT on the GPU in bf16 / fp8 / Q8_0 / Q4_K storage against the same weights on the CPU.
5. host <-> device copies and synchronisations per forward of a resident model (profiler): under a threshold.
6. block offload: bitwise equal to the resident model; pinned bytes against the streamed tensors' bytes.
7. regional compile: recompiles over three prompt lengths (at most one graph per layer kind and length).
8. the tiny workflows in a real ComfyUI (``--comfyui DIR``: a ComfyUI checkout whose python runs this pack) without
   ``--cpu``, with a partial load forced (``--reserve-vram``), asserting the denoise runs on CUDA; run by the
   ComfyUI harness's workflow runner (``--harness FILE`` or ``$MAGIHUMAN_HARNESS``: its ``run_workflow.py``).

Send back the whole output (it starts with the versions) when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import now  # noqa: E402
from magihuman.models.dit import DiTConfig, MagiHumanDiT  # noqa: E402


class Skip(Exception):
    """A check that cannot run here (the reason is printed)."""


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def tiny_inputs(cfg: DiTConfig, device, seed: int = 0, text: int = 7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 48, 3, 8, 8, generator=g).to(device), torch.randn(1, 9, 64, generator=g).to(device),
            torch.randn(1, text, cfg.text_in_channels, generator=g).to(device), [text])


def dit_on(dev: torch.device, storage, cfg: DiTConfig | None = None) -> tuple[DiTConfig, MagiHumanDiT]:
    """A random DiT (tiny unless ``cfg``) in ``storage``, resident on ``dev`` and computing there."""
    cfg = cfg or DiTConfig.preset("tiny")
    model = MagiHumanDiT(cfg, storage=storage).to(dev)
    model.compute_device = dev
    return cfg, model


# ------------------------------------------------------------------------------------------------------ checks

@check
def versions(dev: torch.device) -> str:
    import importlib.util

    from magihuman.attention import available_attention_backends
    from magihuman.device import cuda_bf16_native

    info = {"torch": torch.__version__, "cuda build": torch.version.cuda, "device": str(dev),
            "attention backends usable": available_attention_backends(),
            "flash_attn installed": importlib.util.find_spec("flash_attn") is not None
            or importlib.util.find_spec("flash_attn_interface") is not None,
            "sageattention installed": importlib.util.find_spec("sageattention") is not None}
    if dev.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(dev), capability=torch.cuda.get_device_capability(dev),
                    flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
                    bf16_native=cuda_bf16_native(dev))
    return json.dumps(info, default=str)


@check
def fp8_linear_and_share(dev: torch.device) -> str:
    from magihuman.quant.fp8 import fp8_linear, fp8_mm_supported, quantize_fp8
    from magihuman.storage import STORAGES

    g = torch.Generator().manual_seed(1)
    w8, ws = quantize_fp8(torch.randn(256, 512, generator=g) * 0.05)
    x = (torch.randn(64, 512, generator=g) * torch.linspace(0.1, 4, 64)[:, None])
    w8, ws, x = w8.to(dev), ws.to(dev), x.to(dev)
    ran = []
    for mode in ("tensor", "token"):
        for out in (torch.bfloat16, torch.float16, torch.float32):
            if not fp8_mm_supported(dev, mode, out):
                ran.append(f"{mode}/{str(out)[6:]}: refused (falls back)")
                continue
            y = fp8_linear(x, w8, ws, out, mode)
            ref = torch.nn.functional.linear(x.float(), w8.float() * ws)
            c = cosine(y.float(), ref)
            assert c > 0.999, f"fp8 {mode} -> {out}: cosine {c:.5f}"
            ran.append(f"{mode}/{str(out)[6:]}: cos {c:.5f}")
    if not any("cos" in r for r in ran):
        raise Skip(f"torch._scaled_mm runs no fp8 product on {dev}: " + "; ".join(ran))
    # every block-linear kind of a DiT with the release's awkward widths runs in fp8
    cfg, model = dit_on(dev, STORAGES["fp8"], DiTConfig(num_layers=2, hidden_size=1280, head_dim=128,
                                                         num_query_groups=2, mm_layers=[0], gelu7_layers=[0]))
    model.set_compute_dtype("bf16")
    mode = "token" if fp8_mm_supported(dev, "token", torch.bfloat16) else "tensor"
    model.set_fp8_compute(mode, device=dev)
    calls = []
    real = torch._scaled_mm
    torch._scaled_mm = lambda a, b, **k: calls.append((a.shape[0], b.shape[0], b.shape[1])) or real(a, b, **k)
    try:
        with torch.no_grad():
            model(*tiny_inputs(cfg, dev))
    finally:
        torch._scaled_mm = real
    products = 4 * (cfg.num_layers - len(cfg.mm_layers)) + 4 * 3 * len(cfg.mm_layers)
    assert len(calls) == products, f"{len(calls)} of {products} block-linear products ran in fp8"
    return "; ".join(ran) + f"; DiT hidden 1280: {len(calls)}/{products} block-linear products in fp8 ({mode})"


@check
def attention_kernels(dev: torch.device) -> str:
    from magihuman.attention import attention, available_attention_backends

    g = torch.Generator().manual_seed(2)
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    q = torch.randn(1, 40, 1024, 128, generator=g).to(dev, dt)
    k, v = (torch.randn(1, 8, 1024, 128, generator=g).to(dev, dt) for _ in range(2))
    ref = attention(q, k, v, backend="math").float()
    out = []
    for name in available_attention_backends():
        if name == "math":
            continue
        if name in ("flash", "sage") and dev.type != "cuda":
            continue
        c = cosine(attention(q, k, v, backend=name).float(), ref)
        assert c > 0.999, f"attention {name}: cosine {c:.5f} against math"
        out.append(f"{name} cos {c:.5f}")
    if dev.type != "cuda":
        return "; ".join(out) + "; peak memory at L=8192: skipped (no CUDA)"
    L = 8192
    q = torch.randn(1, 40, L, 128, device=dev, dtype=dt)
    k, v = (torch.randn(1, 8, L, 128, device=dev, dtype=dt) for _ in range(2))
    scores = 40 * L * L * 2  # the bf16 score matrix the math kernel would hold
    for mask in (None, torch.ones(1, 1, L, L, dtype=torch.bool, device=dev)):
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        attention(q, k, v, mask)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        assert peak < scores / 4, f"sdpa at L={L} (mask={mask is not None}) peaked at {peak / 2**30:.2f} GiB"
        out.append(f"L={L}{' masked' if mask is not None else ''}: {peak / 2**20:.0f} MiB peak "
                   f"(math scores {scores / 2**30:.1f} GiB)")
    return "; ".join(out)


@check
def tiny_dit_storages(dev: torch.device) -> str:
    if dev.type != "cuda":
        raise Skip("needs CUDA: compares the GPU against the CPU")
    cfg = DiTConfig.preset("tiny")
    out = []
    for name in ("bf16", "fp8", "Q8_0", "Q4_K"):
        cpu = MagiHumanDiT(cfg, storage=name, compute_dtype=torch.float32)
        gpu = MagiHumanDiT(cfg, storage=name, compute_dtype=torch.float32)
        gpu.load_state_dict(cpu.state_dict(), strict=False)
        for a, b in zip(gpu.block_linears(), cpu.block_linears()):
            a.set_stored(b.weight.clone(), None if b.weight_scale is None else b.weight_scale.clone(), b.storage)
        gpu.to(dev)
        gpu.compute_device = dev
        with torch.no_grad():
            ref = cpu(*tiny_inputs(cfg, "cpu"))
            got = gpu(*tiny_inputs(cfg, dev))
        err = max(rel(x.cpu(), y) for x, y in zip(got, ref))
        assert err < 1e-3, f"tiny DiT {name}: GPU vs CPU relative error {err:.2e}"
        out.append(f"{name} {err:.1e}")
    return "GPU vs CPU, fp32 compute: " + ", ".join(out)


@check
def copies_and_syncs(dev: torch.device) -> str:
    if dev.type != "cuda":
        raise Skip("needs CUDA (tests/test_gpu_copies.py proves it on the meta device)")
    from torch.profiler import ProfilerActivity, profile

    cfg, model = dit_on(dev, "Q8_0")
    x = tiny_inputs(cfg, dev)
    with torch.no_grad():
        model(*x)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model(*x)
    names = [e.name for e in prof.events()]
    copies = sum("Memcpy HtoD" in n or "Memcpy DtoH" in n for n in names)
    syncs = sum(n in ("cudaDeviceSynchronize", "cudaStreamSynchronize") for n in names)
    assert copies <= 4 and syncs <= 4, f"{copies} host<->device copies, {syncs} syncs per forward"
    return f"{copies} host<->device copies and {syncs} synchronisations per forward ({cfg.num_layers} layers)"


@check
def block_offload(dev: torch.device) -> str:
    from magihuman.offload import arena_bytes, enable_block_offload

    cfg = DiTConfig.preset("tiny")
    resident = MagiHumanDiT(cfg, storage="bf16", compute_dtype=torch.float32)
    streamed = MagiHumanDiT(cfg, storage="bf16", compute_dtype=torch.float32)
    streamed.load_state_dict(resident.state_dict())
    resident.to(dev)
    x = tiny_inputs(cfg, dev)
    handle = enable_block_offload(streamed, dev, 1, copy_always=True)
    with torch.no_grad():
        a, b = resident(*x), streamed(*x)
    assert all(torch.equal(p, q) for p, q in zip(a, b)), "block offload changed the output"
    layer_bytes = [t.numel() * t.element_size() for i in handle.streamed for t in handle.streamed[i].host]
    if handle.arena is None:
        return "bitwise equal to the resident model; nothing pinned (host and device are the same)"
    pinned = handle.arena.buffer.numel()
    assert handle.arena.pinned and pinned == arena_bytes(layer_bytes), (pinned, sum(layer_bytes))
    return f"bitwise equal; pinned {pinned} bytes for {sum(layer_bytes)} bytes of streamed tensors"


@check
def recompiles(dev: torch.device) -> str:
    if dev.type != "cuda":
        raise Skip("needs CUDA (inductor on a CPU takes minutes)")
    import torch._dynamo as dynamo

    from magihuman.compile import compile_dit_blocks, layer_kinds

    cfg, model = dit_on(dev, "bf16")
    dynamo.reset()
    compile_dit_blocks(model)
    frames = []
    with torch.no_grad():
        for text in (5, 9, 13):
            model(*tiny_inputs(cfg, dev, text=text))
            frames.append(dynamo.utils.counters["stats"]["unique_graphs"])
    limit = len(layer_kinds(model)) * 3
    assert frames[-1] <= limit, f"{frames[-1]} graphs over 3 prompt lengths, expected at most {limit}"
    return f"graphs after each of 3 prompt lengths: {frames} (at most {limit})"


def harness_runner(harness: str | None) -> Path:
    """The ComfyUI harness's workflow runner: ``harness`` (--harness), else ``$MAGIHUMAN_HARNESS``; Skip when
    neither names an existing file."""
    given = harness or os.environ.get("MAGIHUMAN_HARNESS")
    if not given:
        raise Skip("give --harness <the ComfyUI harness's run_workflow.py> (or set MAGIHUMAN_HARNESS) to run the "
                   "tiny workflows")
    path = Path(given).expanduser()
    if not path.is_file():
        raise Skip(f"the workflow runner {path} (--harness / MAGIHUMAN_HARNESS) is not a file")
    return path


@check
def comfyui_partial_load(dev: torch.device, comfyui: str | None = None, harness: str | None = None) -> str:
    if dev.type != "cuda":
        raise Skip("needs CUDA")
    if not comfyui:
        raise Skip("give --comfyui <ComfyUI folder> (with this pack in its custom_nodes) to run the tiny workflows")
    runner = harness_runner(harness)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        subprocess.run([sys.executable, "-m", "magihuman", "tiny-models", str(models)], check=True, cwd=ROOT,
                       capture_output=True)
        total_gib = torch.cuda.get_device_properties(dev).total_memory / 2**30
        reserve = max(total_gib - 0.05, 0)  # leave ComfyUI ~50 MB: the tiny DiT loads partially
        wf = ROOT / "workflows" / "api" / "magihuman_tiny_t2v_api.json"
        env = dict(os.environ, COMFYUI_DIR=str(Path(comfyui).resolve().parent))
        r = subprocess.run([sys.executable, str(runner), str(ROOT), "-w", str(wf), "--models", str(models),
                            "--server-arg=--reserve-vram", f"--server-arg={reserve:.2f}", "--show-log"],
                           capture_output=True, text=True, env=env, timeout=600)
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-3000:]
        assert "loaded partially" in log or "lowvram" in log.lower(), "no partial load happened"
        assert "Device: cuda" in log, "ComfyUI did not run on CUDA"
    return "tiny T2V ran in ComfyUI on CUDA with a partial load"


# ------------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--comfyui", default=None, help="a ComfyUI folder whose venv runs this pack (check 8)")
    ap.add_argument("--harness", default=None, metavar="FILE",
                    help="the ComfyUI harness's run_workflow.py (check 8; default: $MAGIHUMAN_HARNESS)")
    ap.add_argument("--skip-comfyui", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    failed, skipped = [], []
    t0 = now()
    for fn in CHECKS:
        name = fn.__name__
        if name == "comfyui_partial_load" and args.skip_comfyui:
            skipped.append(name)
            print(f"SKIP {name}: --skip-comfyui")
            continue
        try:
            kw = {"comfyui": args.comfyui, "harness": args.harness} if name == "comfyui_partial_load" else {}
            print(f"OK   {name}: {fn(dev, **kw)}", flush=True)
        except Skip as s:
            skipped.append(name)
            print(f"SKIP {name}: {s}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every check, then fail the run
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3)
    print(f"\n{len(CHECKS) - len(failed) - len(skipped)} passed, {len(skipped)} skipped, {len(failed)} failed "
          f"in {now() - t0:.0f} s on {dev}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
