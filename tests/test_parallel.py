"""Sequence parallelism (magihuman.parallel.sequence) on 2 and 4 CPU ranks (gloo, spawned): every case gives the
one-rank result of the same code without the split.

Tolerance: fp32 compute everywhere; outputs agree within 1e-5 of the reference's largest magnitude (measured: at most
6.3e-7, GEMMs and attention over other row counts round differently; every rank holds bit-identical results). Each rank
count is ONE launch running every case (a launch costs seconds; the cases milliseconds).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from magihuman import pipeline as P
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.packing import SequenceLayout
from magihuman.parallel import SequenceShard, check_world_size, valid_world_sizes
from magihuman.parallel.cost import exchange_bytes
from magihuman.parallel.launch import run_local

RTOL = 1e-5  # of max |reference|


def _config(name: str) -> DiTConfig:
    if name == "kv1":  # 8 query heads, 1 key/value head: replicated 2x / 4x
        return DiTConfig(**{**DiTConfig.preset("tiny").to_dict(), "head_dim": 16, "num_query_groups": 1})
    if name == "one_layer":  # the compile case: fewer graphs to trace
        return DiTConfig(**{**DiTConfig.preset("tiny").to_dict(), "num_layers": 1, "mm_layers": [0],
                            "gelu7_layers": []})
    return DiTConfig.preset(name)


def _model(name: str, dtype=torch.float32) -> MagiHumanDiT:
    return MagiHumanDiT(_config(name), dtype=dtype, compute_dtype=torch.float32)  # deterministic random weights


def _inputs(frames: int = 3, audio: int = 10, lens=(5, 3)):
    """Two rows with different text lengths; L = 18 video + 10 audio + 5 text = 33 (uneven for 2 and 4 ranks)."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(len(lens), 48, frames, 4, 6, generator=g)
    audio_latent = torch.randn(len(lens), audio, 64, generator=g)
    text = torch.randn(len(lens), max(lens) + 2, 64, generator=g)
    return video, audio_latent, text, list(lens)


def _cond() -> P.TextConditioning:
    g = torch.Generator().manual_seed(2)
    return P.TextConditioning(embeds=torch.randn(1, 12, 64, generator=g), lens=[7])


def _forward(model, frf: int = 11, coords: str = "v2", **kw):
    with torch.no_grad():
        return model(*_inputs(**kw), coords=coords, frame_receptive_field=frf)


def _cases(world_size: int, gguf_path: str) -> dict:
    """Every case on this rank: name -> outputs (the reference computes the same without a split)."""
    from magihuman.checkpoints import load_dit
    from magihuman.compile import compile_dit_blocks
    from magihuman.offload import enable_block_offload
    from magihuman.parallel import enable_sequence_parallel

    out, stats = {}, {}

    def run(name, model, fn):
        sp = enable_sequence_parallel(model)
        assert sp is not None and sp.world_size == world_size
        out[name] = fn(model)
        stats[name] = sp.stats.as_dict()

    run("forward", _model("tiny"), _forward)
    run("math_attention", _math(_model("tiny")), _forward)  # any backend: attention sees the whole sequence
    run("kv_replicated", _model("kv1"), _forward)
    run("local_attention", _model("tiny_sr_1080p"), lambda m: _forward(m, frf=1, coords="v1", frames=6, lens=(5,)))
    run("distilled_step", _model("tiny"), _distilled_step)
    run("sr_step", _model("tiny_sr_1080p"), _sr_step)
    run("fp8", _model("tiny", torch.float8_e4m3fn), _forward)
    gguf = load_dit(gguf_path, dtype=torch.float32, show_progress=False)
    gguf.set_compute_dtype(torch.float32)
    run("gguf", gguf, _forward)
    offloaded = _model("tiny")
    enable_block_offload(offloaded, "cpu", 1, copy_always=True)
    run("block_offload", offloaded, _forward)
    masked = _model("tiny")
    masked.set_local_attention("mask")
    try:
        enable_sequence_parallel(masked)
        refused = ""
    except ValueError as e:
        refused = str(e)
    if world_size == 2:  # once: tracing costs seconds per rank
        compiled = compile_dit_blocks(_model("one_layer"), backend="eager")
        run("compile", compiled, _forward)
    return {"outputs": out, "stats": stats, "refused": refused}


def _math(model):
    model.set_attention_backend("math")
    return model


def _distilled_step(model):
    latent = P.empty_latents(64, 64, 0.5)
    out = P.denoise(model, latent, _cond(), sampler="distilled", steps=1, seed=3)
    return out.video, out.audio


def _sr_step(model):
    latent = P.empty_latents(64, 64, 0.8)  # 6 latent frames: the +-1 frame windows matter
    g = torch.Generator().manual_seed(4)
    latent.video, latent.audio = torch.randn(latent.video.shape, generator=g), torch.randn(latent.audio.shape,
                                                                                         generator=g)
    latent.denoised = True
    out = P.super_resolve(model, latent, _cond(), width=128, height=128, steps=1, seed=5, local_attention=1)
    return out.video, out.audio


def _reference(gguf_path: str) -> dict:
    from magihuman.checkpoints import load_dit
    from magihuman.offload import enable_block_offload

    gguf = load_dit(gguf_path, dtype=torch.float32, show_progress=False)
    gguf.set_compute_dtype(torch.float32)
    offloaded = _model("tiny")
    enable_block_offload(offloaded, "cpu", 1, copy_always=True)
    return {
        "forward": _forward(_model("tiny")),
        "math_attention": _forward(_math(_model("tiny"))),
        "kv_replicated": _forward(_model("kv1")),
        "local_attention": _forward(_model("tiny_sr_1080p"), frf=1, coords="v1", frames=6, lens=(5,)),
        "distilled_step": _distilled_step(_model("tiny")),
        "sr_step": _sr_step(_model("tiny_sr_1080p")),
        "fp8": _forward(_model("tiny", torch.float8_e4m3fn)),
        "gguf": _forward(gguf),
        "block_offload": _forward(offloaded),
        "compile": _forward(_model("one_layer")),
    }


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory, tiny_dir):
    pytest.importorskip("gguf")
    from magihuman.tiny import write_tiny_gguf

    root = tmp_path_factory.mktemp("sp_gguf") / "models"
    shutil.copytree(tiny_dir, root)
    return str(write_tiny_gguf(root)["distill_Q8_0"])


@pytest.fixture(scope="module")
def reference(gguf_path):
    return _reference(gguf_path)


def _diffs(ref, got) -> tuple[float, float]:
    """(max abs difference, the same relative to max |reference|) over video and audio."""
    diff = max((r - g).abs().max().item() for r, g in zip(ref, got))
    scale = max(r.abs().max().item() for r in ref)
    return diff, diff / scale


@pytest.mark.parametrize("world_size", [2, 4])
def test_sequence_parallel_matches_one_rank(world_size, gguf_path, reference, record_property):
    ranks = run_local(_cases, world_size, world_size, gguf_path, timeout=240)
    names = list(ranks[0]["outputs"])
    assert set(names) >= set(reference) - {"compile"} and ("compile" in names) == (world_size == 2)
    for name in names:
        for rank, result in enumerate(ranks):
            diff, rel = _diffs(reference[name], result["outputs"][name])
            record_property(f"{name}_rank{rank}", f"max abs {diff:.2e}, rel {rel:.2e}")
            assert rel <= RTOL, (name, rank, diff, rel)
        # every rank gets the same whole velocity (and the sampler, run on every rank, the same next latent)
        assert all(torch.equal(ranks[0]["outputs"][name][0], r["outputs"][name][0]) for r in ranks)
    assert "runs the default 'window' attention plan" in ranks[0]["refused"]
    # the communication model counts exactly what the forward sent (tiny: fp32 compute, 4 layers)
    cfg, stats = _config("tiny"), ranks[0]["stats"]["forward"]
    model = exchange_bytes(cfg, 18 + 10 + 5, world_size, batch=2, dtype_bytes=4)
    assert stats["all_to_all_calls"] == model["all_to_all_calls"] == 8
    assert stats["all_to_all_bytes"] == model["all_to_all_bytes"]
    assert stats["all_gather_bytes"] == model["all_gather_bytes"]
    kv = exchange_bytes(_config("kv1"), 33, world_size, batch=2, dtype_bytes=4)  # replicated kv heads cost more
    assert ranks[0]["stats"]["kv_replicated"]["all_to_all_bytes"] == kv["all_to_all_bytes"]


def test_rank_counts_the_heads_cannot_split_are_refused():
    with pytest.raises(ValueError, match=r"over 3 ranks is not possible.*4 query heads and 2 key/value heads.*"
                                         r"use 1, 2, 4 ranks"):
        check_world_size(4, 2, 3)
    assert valid_world_sizes(40, 8) == [1, 2, 4, 8, 40]  # 40: each kv head sent 5 times
    check_world_size(8, 1, 4)  # kv heads replicated


@pytest.mark.parametrize("world_size", [2, 3, 4, 8])
def test_shards_tile_the_padded_sequence(world_size):
    layout = SequenceLayout((2, 2, 3), 5, (4, 2))  # L = 12 + 5 + 4 = 21
    shards = [SequenceShard.of(layout, r, world_size) for r in range(world_size)]
    size = -(-21 // world_size)
    assert all(s.size == size and s.pad == world_size * size - 21 for s in shards)
    covered = []
    for s in shards:
        assert s.segments[0][0] == 0 and s.segments[-1][1] == size  # three ordered segments tile [0, s)
        assert all(a <= b for a, b in s.segments) and s.segments[0][1] == s.segments[1][0]
        for a, b in s.segments:
            covered += range(s.start + a, s.start + b)
    assert covered == list(range(world_size * size))
    assert shards[-1].key_lens(layout) == (21, 19)  # global indices: padded text and padding rows excluded


def test_memory_check_prices_one_share_of_the_activations(monkeypatch):
    """A run that fits only when split over N ranks passes the check with ranks=N (what the ComfyUI samplers pass
    for a Multi-GPU handle) and is refused on one; the estimate of the split is the one-rank one over N (plus the
    per-rank dequantisation scratch and the whole latents)."""
    from magihuman import estimate as est

    model = _model("tiny")
    lat = P.empty_latents(448, 256, 2.0)
    one = P.dit_activation_bytes(model.config, lat, cfg=False)
    four = P.dit_activation_bytes(model.config, lat, cfg=False, ranks=4)
    assert one / 4 <= four < one / 2
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: (one + four) // 2)
    with pytest.raises(P.PipelineError, match="DiT activations alone"):
        P.check_fits(model, lat, "test", cfg=False)
    assert P.check_fits(model, lat, "test", cfg=False, ranks=4) == four  # what the ComfyUI samplers reserve
