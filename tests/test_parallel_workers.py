"""The worker group behind the Multi-GPU nodes (magihuman.parallel.workers), on the CPU: this process is rank 0 and
one worker process is rank 1 (gloo). It gives the one-process result (LoRA included); a worker that raises or is
killed mid-step stops the run within a bounded time with an error naming it, and the next run works. Then the same
through the nodes (without ComfyUI)."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from magihuman import pipeline as P
from magihuman.checkpoints import load_dit
from magihuman.lora import apply_lora, remove_lora
from magihuman.parallel import workers as W
from magihuman.weights.safetensors_io import write_file

RTOL = 1e-5  # of max |reference|: fp32 compute (measured ~5e-7)
TIMEOUT = 60  # the group's timeout; the failures below are noticed long before it


@pytest.fixture(scope="module")
def env(tiny_dir, tmp_path_factory):
    """The host DiT, a LoRA file, and the fault file the workers look for (they inherit the variable)."""
    root = tmp_path_factory.mktemp("workers")
    fault = root / "fault.json"
    saved = os.environ.get(W.FAULT_ENV)
    os.environ[W.FAULT_ENV] = str(fault)
    from tests.test_lora import hand_made_lora

    lora = root / "lora.safetensors"
    write_file(lora, hand_made_lora()[0])
    path = str(tiny_dir / "diffusion_models" / "magihuman_tiny_distill")
    model = load_dit(path, dtype=torch.float32, show_progress=False)
    model.set_compute_dtype(torch.float32)
    yield dict(model=model, path=path, lora=str(lora), fault=fault)
    W.shutdown()
    if saved is None:
        os.environ.pop(W.FAULT_ENV, None)
    else:
        os.environ[W.FAULT_ENV] = saved


def _cond():
    g = torch.Generator().manual_seed(2)
    return P.TextConditioning(embeds=torch.randn(1, 12, 64, generator=g), lens=[7])


def _denoise(model, steps=2):
    out = P.denoise(model, P.empty_latents(64, 64, 0.5), _cond(), sampler="distilled", steps=steps, seed=3)
    return out.video, out.audio


def _rel(ref, got) -> float:
    return max((r - g).abs().max().item() for r, g in zip(ref, got)) / max(r.abs().max().item() for r in ref)


def test_group_gives_the_one_process_result_with_and_without_lora(env, record_property):
    model = env["model"]
    ref = _denoise(model)
    group_dit = W.parallel_dit(model, env["path"], 2, timeout=TIMEOUT)
    t0 = time.monotonic()
    got = _denoise(group_dit)
    record_property("first run (start + load + 2 steps)", f"{time.monotonic() - t0:.2f} s")
    record_property("rel diff", f"{_rel(ref, got):.2e}")
    assert _rel(ref, got) <= RTOL and W.current_group().forwards == 2
    pid = W.current_group().workers[0].proc.pid

    apply_lora(model, env["lora"], 0.8)  # the host's copy (ComfyUI: its patcher); the workers load the same file
    try:
        ref_lora = _denoise(model)
        got_lora = _denoise(W.parallel_dit(model, env["path"], 2, timeout=TIMEOUT, loras=[(env["lora"], 0.8)]))
    finally:
        remove_lora(model)
    assert _rel(ref_lora, got_lora) <= RTOL and _rel(ref, ref_lora) > 1e-3  # the LoRA changes the result
    assert W.current_group().workers[0].proc.pid == pid  # the same worker, kept alive
    group = W.current_group()
    assert W.get_group(group.devices, 45) is group and group.timeout == 45  # another timeout: no restart
    assert W.get_group(group.devices, TIMEOUT) is group


@pytest.mark.parametrize("action, cause", [("raise", "failed: RuntimeError: injected fault in worker 1"),
                                           ("kill", "died (killed by signal SIGKILL)")])
def test_a_failing_worker_stops_the_run_with_a_clear_error_and_the_next_run_works(env, action, cause):
    model = env["model"]
    group_dit = W.parallel_dit(model, env["path"], 2, timeout=TIMEOUT)
    ref = _denoise(model, steps=1)
    _denoise(group_dit, steps=1)  # a running group
    group = W.current_group()
    env["fault"].write_text(json.dumps({"rank": 1, "action": action}))  # mid-step: inside the worker's forward
    t0 = time.monotonic()
    with pytest.raises(W.WorkerGroupError) as e:
        _denoise(group_dit, steps=1)
    assert time.monotonic() - t0 < 10  # noticed at once, not at the timeout
    msg = str(e.value)
    assert msg.startswith("MagiHuman Multi-GPU: worker 1 (pid ") and cause in msg and "(during a DiT step)" in msg
    assert "the next run starts a new one" in msg
    assert group.closed and W.current_group() is None and group.workers[0].proc.poll() is not None
    assert not torch.distributed.is_initialized()
    assert _rel(ref, _denoise(group_dit, steps=1)) <= RTOL  # a new group
    assert W.current_group() is not group


def test_multi_gpu_nodes_drive_the_group(env, pack, node_pack, tiny_dir):
    import importlib

    W.shutdown()  # one group per process: the nodes use the pack's copy of the engine (as inside ComfyUI)
    pack_workers = importlib.import_module(f"{pack.__name__}.magihuman.parallel.workers")
    nodes = node_pack(tiny_dir)
    try:
        loaded = nodes.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp32",
                           compute_dtype="fp32")[0]
        multi = nodes.run("MagiHumanMultiGPU", model=loaded, gpus=2, timeout_seconds=TIMEOUT)[0]
        assert multi is not loaded and multi.gpus == 2 and not hasattr(loaded, "gpus")  # the input is unchanged
        with pytest.raises(ValueError, match=r"MagiHuman Multi-GPU: sequence parallel over 3 ranks is not possible"):
            nodes.run("MagiHumanMultiGPU", model=loaded, gpus=3)
        with pytest.raises(ValueError, match=r"MagiHuman SR Multi-GPU: sequence parallel over 8 ranks"):
            nodes.run("MagiHumanSRMultiGPU", sr_model=loaded, gpus=8)
        pos = nodes.run("MagiHumanTextEncode", text_encoder=nodes.load_tiny("te")["te"], prompt="A man smiles.")[0]
        latent = nodes.run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.5, batch_size=1)[0]
        sample = dict(positive=pos, latent=latent, seed=3, steps=2, shift=5.0)
        plain = nodes.run("MagiHumanDistilledSampler", model=loaded, **sample)[0]
        group = nodes.run("MagiHumanDistilledSampler", model=multi, **sample)[0]
        assert _rel([plain["samples"]], [group["samples"]]) <= RTOL
        assert pack_workers.current_group().world_size == 2
        again = nodes.run("MagiHumanDistilledSampler", model=multi, **sample)[0]  # the same workers, kept
        assert torch.equal(again["samples"], group["samples"]) and pack_workers.current_group().forwards == 4
        from magihuman.lora import load_lora

        with_lora = multi.with_lora(load_lora(env["lora"], multi.model), 0.8)  # a LoRA Loader after this node
        assert type(with_lora) is type(multi) and with_lora.gpus == 2 and len(with_lora.loras) == 1
    finally:
        pack_workers.shutdown()
        nodes.close()
