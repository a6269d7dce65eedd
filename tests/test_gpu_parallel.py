"""Several GPUs, proven on CPU gloo ranks and patched availability queries: the backend where torch has no
NCCL, fp8 support probed on each worker's own GPU, exchange timing from CUDA events (no host stall per
exchange), one set of numerics and rank 0's noise on every rank."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist

from magihuman import pipeline as P
from magihuman.models import dit as dit_module
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.options import RunOptions
from magihuman.parallel import launch as L
from magihuman.parallel import workers as W
from magihuman.parallel.launch import run_local
from magihuman.sampling import make_generator

RTOL = 1e-5  # of max |reference|: fp32 compute, other row counts round differently (see test_parallel)


def _cuda(monkeypatch, capabilities):
    """A machine whose CUDA devices have these compute capabilities (what fp8 support was decided is forgotten)."""
    from magihuman.quant import fp8

    monkeypatch.setattr(fp8, "_MM_SUPPORT", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: capabilities[0 if d is None else torch.device(d).index or 0])


# ------------------------------------------------------------------------------------------- backend

def test_cuda_ranks_without_nccl_use_gloo(monkeypatch, caplog):
    """Windows builds of torch have no NCCL: torchrun ranks on GPUs form a gloo group (with a warning) instead
    of failing in init_process_group."""
    _cuda(monkeypatch, [(8, 6), (8, 6)])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    inits = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: inits.append((backend, kw)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with caplog.at_level(logging.WARNING, logger="magihuman.parallel"):
        ctx = L.torchrun_context()
    assert (ctx.backend, ctx.device) == ("gloo", torch.device("cuda", 1))
    assert inits == [("gloo", {"timeout": L.DEFAULT_TIMEOUT})]
    assert "no NCCL" in caplog.text
    assert L.collective_backend(torch.device("cpu")) == "gloo"
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert L.collective_backend(torch.device("cuda", 0)) == "nccl"


def test_host_group_does_not_wait_for_every_collective():
    """TORCH_NCCL_BLOCKING_WAIT made rank 0's thread wait for each all-to-all to finish (2 per layer); the host
    keeps only the error handling that spares the ComfyUI process on a timeout."""
    assert W.host_nccl_env("nccl") == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    assert W.host_nccl_env("gloo") == {}


# ------------------------------------------------------------------------------------------- fp8 probe

def _fp8_model():
    model = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    model.fp8_compute = "token"  # what set_fp8_compute("auto") gives on an Ada host GPU
    return model


def test_group_refuses_fp8_compute_a_worker_gpu_lacks(monkeypatch):
    _cuda(monkeypatch, [(8, 9), (8, 6)])  # RTX 4090 host, RTX 3090 worker
    with pytest.raises(ValueError, match=r"fp8 compute 'token' runs on every GPU of the group, but cuda:1 has no "
                                         r"fp8 matmuls.*fp8_compute 'off'"):
        W.parallel_dit(_fp8_model(), "unused.safetensors", 2, host_device="cuda:0")
    _cuda(monkeypatch, [(8, 9), (12, 0)])  # 4090 + 5090: both have them
    group = W.parallel_dit(_fp8_model(), "unused.safetensors", 2, host_device="cuda:0")
    assert group.devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert group.spec.options.fp8_compute == "token"


def test_worker_probes_fp8_on_its_gpu_when_it_builds_on_the_cpu(monkeypatch, tiny_dir):
    """A worker keeping one DiT on its GPU builds the next on the CPU: fp8 support is still its GPU's."""
    _cuda(monkeypatch, [(8, 9), (8, 9)])
    probed = []
    real = dit_module.fp8_mm_supported
    monkeypatch.setattr(dit_module, "fp8_mm_supported", lambda d, *a: probed.append(torch.device(d)) or real(d, *a))
    spec = W.DiTSpec(path=str(tiny_dir / "diffusion_models" / "magihuman_tiny_distill"), storage="fp8",
                     options=RunOptions(compute_dtype="bf16", fp8_compute="token"))
    model = spec.build(torch.device("cpu"), compute_device=torch.device("cuda", 1))
    assert model.fp8_compute == "token" and probed == [torch.device("cuda", 1)]
    assert model.adapter.video_embedder.weight.device.type == "cpu"


def test_workers_run_a_host_only_attention_kernel_as_sdpa(monkeypatch, caplog):
    """A kernel the host registered (ComfyUI's "comfy") does not exist in a worker process: the spec hands the
    workers "sdpa" and says so; the engine's own kernels (flash, sage, math) pass through."""
    from magihuman import attention

    monkeypatch.setitem(attention._BACKENDS, "host_only", attention.sdpa_attention)
    model = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32)
    for name, sent in (("host_only", "sdpa"), ("math", "math"), ("flash", "flash")):
        model.attention_backend = name
        with caplog.at_level(logging.WARNING, logger="magihuman"):
            caplog.clear()
            assert W.DiTSpec.of(model, "dit").options.attention == sent
        assert ("workers run attention 'host_only' as 'sdpa'" in caplog.text) == (name == "host_only")


# ------------------------------------------------------------------------------------------- exchange timing

class _Event:
    log: list = []
    done = False  # what query() says: the GPU has run the work recorded so far

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        _Event.log.append("record")
        self.t = len(_Event.log)

    def synchronize(self):
        _Event.log.append("event.synchronize")

    def query(self):
        return _Event.done

    def elapsed_time(self, end):
        return 7.0  # ms


def _timed_forward(gpu_done: bool = False):
    """On a gloo rank, the SequenceParallel taken for NCCL (what a GPU group runs): count what timing does
    (``gpu_done``: the events report their work done as soon as asked)."""
    import torch.cuda

    from magihuman.parallel import SequenceParallel, sequence_parallel

    torch.cuda.Event = _Event
    _Event.done = gpu_done
    syncs = []
    torch.cuda.synchronize = lambda *a: syncs.append(a)
    model = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32, compute_dtype=torch.float32)
    sp = SequenceParallel(model.config.num_heads_q, model.config.num_heads_kv)
    sp.backend = "nccl"  # collectives still go through this gloo group; only the timing path is NCCL's
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 48, 2, 4, 6, generator=g), torch.randn(1, 10, 64, generator=g),
              torch.randn(1, 5, 64, generator=g), [5])
    with torch.no_grad(), sequence_parallel(model, sp):
        model(*inputs)
    during = dict(records=_Event.log.count("record"), event_syncs=_Event.log.count("event.synchronize"),
                  syncs=len(syncs), pending=len(sp.stats.pending))
    seconds = sp.stats.seconds
    return dict(during=during, seconds=seconds, calls=sp.stats.all_to_all_calls + sp.stats.all_gather_calls,
                after_syncs=_Event.log.count("event.synchronize"))


def test_exchange_time_comes_from_cuda_events_without_a_host_wait_per_exchange():
    ranks = run_local(_timed_forward, 2, timeout=120)
    for r in ranks:
        n = r["calls"]
        assert n == 2 * 4 + 1  # 2 all-to-alls per layer (4 layers) + the final gather
        assert r["during"] == dict(records=2 * n, event_syncs=0, syncs=0, pending=n)  # nothing waited on
        assert r["seconds"] == pytest.approx(n * 0.007) and r["after_syncs"] == 1  # one wait when read
    # finished pairs are read as new ones come: a server that never asks for the time keeps no growing list
    for r in run_local(_timed_forward, 2, True, timeout=120):
        n = r["calls"]
        assert r["during"] == dict(records=2 * n, event_syncs=0, syncs=0, pending=1)
        assert r["seconds"] == pytest.approx(n * 0.007)


# ------------------------------------------------------------------------------------------- numerics, noise

def _cond():
    g = torch.Generator().manual_seed(2)
    return P.TextConditioning(embeds=torch.randn(1, 12, 64, generator=g), lens=[7])


def _sample(model, seed: int):
    """A 2-step distilled denoise, then one SR step (its re-noise draws too), from generator ``seed``."""
    out = P.denoise(model["base"], P.empty_latents(64, 64, 0.5), _cond(), sampler="distilled", steps=2,
                    generator=make_generator(seed))
    sr = P.super_resolve(model["sr"], out, _cond(), width=128, height=128, steps=1, generator=make_generator(seed + 1),
                         local_attention=1)
    return out.video, out.audio, sr.video


def _models():
    return {"base": MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32, compute_dtype=torch.float32),
            "sr": MagiHumanDiT(DiTConfig.preset("tiny_sr_1080p"), dtype=torch.float32, compute_dtype=torch.float32)}


def _ranks_with_their_own_generators():
    from magihuman.parallel import enable_sequence_parallel

    rank = dist.get_rank()
    models = _models()
    for m in models.values():
        enable_sequence_parallel(m)
    sampled = _sample(models, seed=10 + 100 * rank)  # every rank's generator draws other numbers
    # numerics resolved per GPU ("auto"): bf16 on rank 0, fp16 on rank 1; fp8 matmuls on rank 0 only
    mixed = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32,
                         compute_dtype=torch.bfloat16 if rank == 0 else torch.float16)
    mixed.fp8_compute = "token" if rank == 0 else "off"
    enable_sequence_parallel(mixed)
    return dict(sampled=sampled, numerics=(mixed.compute_dtype, mixed.fp8_compute),
                layers={(m.compute_dtype, m.fp8_compute) for m in mixed.block_linears()})


def test_every_rank_samples_with_rank_0_noise_and_one_set_of_numerics():
    ranks = run_local(_ranks_with_their_own_generators, 2, timeout=180)
    reference = _sample(_models(), seed=10)  # one process, rank 0's generator
    for r in ranks:
        for ref, got in zip(reference, r["sampled"]):
            assert (ref - got).abs().max().item() <= RTOL * ref.abs().max().item()
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["sampled"], ranks[1]["sampled"]))
    assert ranks[0]["numerics"] == ranks[1]["numerics"] == (torch.float16, "off")
    assert ranks[0]["layers"] == ranks[1]["layers"] == {(torch.float16, "off")}  # what the layers really run


def test_worker_store_asks_for_no_libuv_on_windows(monkeypatch):
    """torch on Windows is built without libuv, the default TCPStore backend since torch 2.4."""
    made = []
    monkeypatch.setattr(dist, "TCPStore", lambda *a, **kw: made.append(kw) or "store")
    timeout = L.DEFAULT_TIMEOUT
    assert L.tcp_store("127.0.0.1", 0, 2, is_master=True, timeout=timeout, platform="win32") == "store"
    L.tcp_store("127.0.0.1", 0, 2, is_master=True, timeout=timeout, platform="linux")
    assert made == [dict(is_master=True, timeout=timeout, use_libuv=False), dict(is_master=True, timeout=timeout)]
