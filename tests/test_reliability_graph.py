"""Graph misuse, interruption and determinism of the node pack (tiny models, no ComfyUI).

- misuse: latents of other models, SR latents into the base sampler, split/join with mismatched
  lengths, conditioning of other text encoders -> ValueError subclasses naming the problem and the fix;
- interruption (distilled, base, SR, decode): inputs unmodified, the model's parameters unchanged,
  and the next run gives exactly the uninterrupted result for the same seed;
- determinism: same seed -> identical outputs on CPU, different seeds -> different outputs.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch



@pytest.fixture(scope="module")
def env(pack, node_pack, tiny_dir):
    np_ = node_pack(tiny_dir)
    compat, nodes, run = np_.compat, np_.nodes, np_.run
    m = np_.load_tiny()
    pos, neg = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="A woman laughs and says hello.",
                   negative_prompt="blurry, silent", encode_negative=True)
    (lat,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.5, batch_size=1)
    compat.request_interrupt(False)
    yield {"compat": compat, "nodes": nodes, "run": run, "m": m, "pos": pos, "neg": neg, "lat": lat,
           "pl": importlib.import_module(f"{pack.__name__}.magihuman.pipeline"),
           "lio": importlib.import_module(f"{pack.__name__}.nodes.latent_io")}
    compat.request_interrupt(False)
    np_.close()


def _names(msg: str, *parts: str) -> None:
    for p in parts:
        assert p.lower() in msg.lower(), f"{p!r} not in: {msg}"


def _tensors(d) -> dict:
    """Every tensor in a (nested) LATENT dict, by path, cloned."""
    out = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            out[path] = x.clone()
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")

    walk(d, "")
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ============================================================================ misuse


@pytest.mark.parametrize("latent,problem", [
    ({"samples": torch.zeros(1, 4, 8, 8)}, "(1, 4, 8, 8)"),                    # SD / SDXL
    ({"samples": torch.zeros(1, 16, 8, 8)}, "(1, 16, 8, 8)"),                  # Flux / SD3
    ({"samples": torch.zeros(1, 128, 3, 4, 4)}, "(1, 128, 3, 4, 4)"),          # LTX-Video
    ({"samples": torch.zeros(1, 16, 3, 8, 8)}, "(1, 16, 3, 8, 8)"),            # Wan 2.1
])
def test_latents_of_other_models(env, latent, problem):
    lio = env["lio"]
    for node, kw in (("MagiHumanDistilledSampler", dict(model=env["m"]["dit"], positive=env["pos"], seed=0)),
                     ("MagiHumanTurboVAEDecode", dict(turbo_vae=env["m"]["turbo"])),
                     ("MagiHumanAudioDecode", dict(audio_vae=env["m"]["audio"])),
                     ("MagiHumanSplitAVLatent", {})):
        with pytest.raises(lio.LatentTypeError) as e:
            env["run"](node, latent=latent, **kw)
        _names(str(e.value), problem, "not a MagiHuman audio+video latent", "MagiHuman Empty AV Latent")


def test_wan22_shaped_latent_without_audio(env):
    """Same video shape as ours (Wan2.2 VAE, 48 ch) but made by other nodes: no audio latent."""
    with pytest.raises(env["lio"].LatentTypeError) as e:
        env["run"]("MagiHumanDistilledSampler", model=env["m"]["dit"], positive=env["pos"],
                   latent={"samples": torch.zeros(1, 48, 3, 4, 4)}, seed=0)
    _names(str(e.value), "no MagiHuman audio latent", "MagiHuman Join AV Latent")


def test_sr_latent_into_the_base_sampler_and_twice_into_sr(env):
    run, m = env["run"], env["m"]
    (den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"], latent=env["lat"], seed=0, steps=1)
    (sr,) = run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=den, resolution="custom",
                width=96, height=96, seed=0, steps=1)
    for node, kw in (("MagiHumanDistilledSampler", dict(model=m["dit"])),
                     ("MagiHumanBaseSampler", dict(model=m["base"], negative=env["neg"]))):
        with pytest.raises(env["pl"].PipelineError) as e:
            run(node, positive=env["pos"], latent=sr, seed=0, steps=1, **kw)
        _names(str(e.value), "already super-resolved", "base latent")
    with pytest.raises(env["pl"].PipelineError) as e:
        run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=sr, resolution="custom",
            width=128, height=128, seed=0, steps=1)
    _names(str(e.value), "already super-resolved", "base latent")
    with pytest.raises(env["pl"].PipelineError) as e:  # SR before denoising
        run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=env["lat"], resolution="custom",
            width=128, height=128, seed=0, steps=1)
    _names(str(e.value), "not been denoised", "run denoise first")
    with pytest.raises(ValueError) as e:  # CFG without a negative
        run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=den, resolution="custom",
            width=96, height=96, seed=0, steps=1, cfg=True)
    _names(str(e.value), "cfg is on", "no negative conditioning")
    (ti2v,) = run("MagiHumanImageToVideo", latent=env["lat"], video_vae=m["wan"], image=torch.rand(1, 40, 40, 3))
    (ti2v_den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"], latent=ti2v, seed=0, steps=1)
    with pytest.raises(ValueError) as e:  # TI2V latent into SR without the VAE to re-encode the image
        run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=ti2v_den, resolution="custom",
            width=96, height=96, seed=0, steps=1)
    _names(str(e.value), "image-to-video latent", "connect the Wan2.2 VAE to 'video_vae'")
    (ok,) = run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=ti2v_den, resolution="custom",
                width=96, height=96, seed=0, steps=1, video_vae=m["wan"])
    assert ok["samples"].shape[-2:] == (6, 6) and torch.isfinite(ok["samples"]).all()


def test_split_join_mismatched_lengths(env):
    run = env["run"]
    v, a = run("MagiHumanSplitAVLatent", latent=env["lat"])  # 0.5 s: 14 audio steps, 4 latent frames
    (longer,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=1.0)
    v2, a2 = run("MagiHumanSplitAVLatent", latent=longer)
    for video, audio in ((v, a2), (v2, a)):
        with pytest.raises(env["pl"].PipelineError) as e:
            run("MagiHumanJoinAVLatent", video_latent=video, audio_latent=audio)
        _names(str(e.value), "audio and video lengths do not match", "(N-1)//4+1")
    with pytest.raises(env["lio"].LatentTypeError) as e:  # swapped inputs
        run("MagiHumanJoinAVLatent", video_latent=a, audio_latent=v)
    _names(str(e.value), "video_latent must be [B, 48, T, h, w]")
    with pytest.raises(env["lio"].LatentTypeError) as e:  # another model's audio latent (e.g. 8 channels)
        run("MagiHumanJoinAVLatent", video_latent=v, audio_latent={"samples": torch.zeros(1, 8, 14), "type": "audio"})
    _names(str(e.value), "[B, 64, N]", "MagiHuman Split AV Latent")
    with pytest.raises(env["pl"].PipelineError) as e:  # batch sizes
        run("MagiHumanJoinAVLatent", video_latent={"samples": v["samples"].repeat(2, 1, 1, 1, 1)}, audio_latent=a)
    _names(str(e.value), "batch sizes differ")
    with pytest.raises(env["lio"].LatentTypeError) as e:  # the audio half alone into a sampler
        run("MagiHumanDistilledSampler", model=env["m"]["dit"], positive=env["pos"], latent=a, seed=0)
    _names(str(e.value), "audio-only LATENT", "MagiHuman Join AV Latent")
    with pytest.raises(env["lio"].LatentTypeError) as e:  # the video half alone into a decoder
        run("MagiHumanTurboVAEDecode", turbo_vae=env["m"]["turbo"], latent=v)
    _names(str(e.value), "no MagiHuman audio latent", "MagiHuman Join AV Latent")
    (joined,) = run("MagiHumanJoinAVLatent", video_latent=v, audio_latent=a)  # the matching pair is fine
    assert torch.equal(joined["magihuman_audio"], env["lat"]["magihuman_audio"])


@pytest.mark.parametrize("cond,problem", [
    ([[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]], "not made by 'MagiHuman Text Encode'"),
    ([[torch.zeros(1, 512, 4096), {}]], "not made by 'MagiHuman Text Encode'"),              # umt5 / T5-XXL
    ([], "is not a CONDITIONING"),
    (None, "is not a CONDITIONING"),
])
def test_conditioning_from_other_text_encoders(env, cond, problem):
    with pytest.raises(env["lio"].LatentTypeError) as e:
        env["run"]("MagiHumanDistilledSampler", model=env["m"]["dit"], positive=cond, latent=env["lat"], seed=0)
    _names(str(e.value), problem)


def test_conditioning_with_the_wrong_width(env):
    """A MagiHuman-looking conditioning from another T5Gemma size: the DiT's text width does not match."""
    cond = [[torch.zeros(1, 640, 99), {"magihuman_len": 5, "magihuman_prompt": "x"}]]
    with pytest.raises(env["pl"].PipelineError) as e:
        env["run"]("MagiHumanDistilledSampler", model=env["m"]["dit"], positive=cond, latent=env["lat"], seed=0)
    _names(str(e.value), "99 channels", "text encoder does not belong to this model", "T5Gemma")


def test_negative_not_encoded_into_cfg(env):
    pos, neg = env["run"]("MagiHumanTextEncode", text_encoder=env["m"]["te"], prompt="hi", negative_prompt="",
                          encode_negative=False)
    with pytest.raises(env["lio"].LatentTypeError) as e:
        env["run"]("MagiHumanBaseSampler", model=env["m"]["base"], positive=pos, negative=neg, latent=env["lat"],
                   seed=0, steps=1)
    _names(str(e.value), "negative prompt was not encoded", "enable the negative prompt")


# ============================================================================ interruption


def _interrupt_at(env, monkeypatch, at_step: int):
    """Make the node's progress callback raise the interrupt after ``at_step`` completed steps."""
    compat = env["compat"]
    seen = []

    def fake(total):
        def cb(step, total_steps=None, *a, **k):
            seen.append(step)
            if step == at_step:
                compat.request_interrupt()
            compat.check_interrupt()
        return cb

    monkeypatch.setattr(compat, "progress_callback", fake)
    return seen


def _stage_runs(env):
    run, m = env["run"], env["m"]
    (den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"], latent=env["lat"], seed=5, steps=2)
    return {
        "distilled": ("dit", lambda: run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"],
                                         latent=env["lat"], seed=11, steps=3), env["lat"]),
        "base": ("base", lambda: run("MagiHumanBaseSampler", model=m["base"], positive=env["pos"], negative=env["neg"],
                                     latent=env["lat"], seed=11, steps=3), env["lat"]),
        "sr": ("sr", lambda: run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=den,
                                 resolution="custom", width=96, height=96, seed=11, steps=3), den),
    }


@pytest.mark.parametrize("stage", ["distilled", "base", "sr"])
@pytest.mark.parametrize("at_step", [1, 2])
def test_interrupt_during_sampling(env, monkeypatch, stage, at_step):
    model_key, go, inp = _stage_runs(env)[stage]
    reference = go()[0]  # uninterrupted, same seed
    model = env["m"][model_key].model
    params = {k: v.clone() for k, v in model.state_dict().items()}
    before = _tensors(inp)
    seen = _interrupt_at(env, monkeypatch, at_step)
    with pytest.raises(env["compat"].InterruptedByUser):
        go()
    assert seen == list(range(1, at_step + 1))  # stopped mid-run, right after the interrupting step
    assert _same(_tensors(inp), before)  # inputs untouched
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in params.items())  # nothing half-changed in the model
    monkeypatch.undo()
    again = go()[0]
    assert _same(_tensors(again), _tensors(reference))


def test_interrupt_during_decode(env, monkeypatch):
    run, m, compat = env["run"], env["m"], env["compat"]
    (lat2,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.3, batch_size=2)
    (den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"], latent=lat2, seed=1, steps=1)
    before = _tensors(den)
    for node, key, kw in (("MagiHumanTurboVAEDecode", "turbo", dict(turbo_vae=m["turbo"])),
                          ("MagiHumanVideoVAEDecode", "wan", dict(video_vae=m["wan"], tile_size=0)),
                          ("MagiHumanAudioDecode", "audio", dict(audio_vae=m["audio"], sample_rate="48000"))):
        (reference,) = run(node, latent=den, **kw)
        params = {k: v.clone() for k, v in m[key].model.state_dict().items()}
        calls = []
        real_check = compat.check_interrupt

        def second_check_interrupts():  # the first clip is decoded, the interrupt comes before the second
            calls.append(1)
            if len(calls) == 2:
                compat.request_interrupt()
            real_check()

        monkeypatch.setattr(compat, "check_interrupt", second_check_interrupts)
        with pytest.raises(compat.InterruptedByUser):
            run(node, latent=den, **kw)
        monkeypatch.undo()
        assert len(calls) == 2
        assert _same(_tensors(den), before)
        after = m[key].model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in params.items())
        (again,) = run(node, latent=den, **kw)
        if isinstance(reference, dict):
            assert torch.equal(again["waveform"], reference["waveform"])
        else:
            assert torch.equal(again, reference)


def test_failed_load_leaves_nothing_half_loaded(env, tmp_path):
    """A DiT load that fails half-way (second shard truncated) raises and the next good load is complete."""
    import shutil

    from magihuman.checkpoints import CheckpointError, load_dit

    good = f"{env['compat'].folder_paths_for('diffusion_models')[0]}/magihuman_tiny_distill"
    bad = tmp_path / "distill_broken"
    shutil.copytree(good, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated"):
        load_dit(bad, dtype=torch.float32, show_progress=False)
    fresh = load_dit(good, dtype=torch.float32, show_progress=False)
    ref = env["m"]["dit"].model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in fresh.state_dict().items())


# ============================================================================ determinism


def test_same_seed_same_outputs_different_seed_differs(env):
    run, m = env["run"], env["m"]

    def distilled(seed):
        return run("MagiHumanDistilledSampler", model=m["dit"], positive=env["pos"], latent=env["lat"], seed=seed,
                   steps=2)[0]

    def base(seed):
        return run("MagiHumanBaseSampler", model=m["base"], positive=env["pos"], negative=env["neg"],
                   latent=env["lat"], seed=seed, steps=2)[0]

    for fn in (distilled, base):
        a, b, c = fn(3), fn(3), fn(4)
        assert _same(_tensors(a), _tensors(b))
        assert not torch.equal(a["samples"], c["samples"]) and not torch.equal(a["magihuman_audio"],
                                                                              c["magihuman_audio"])
    den = distilled(3)

    def sr(seed):
        return run("MagiHumanLatentSR", sr_model=m["sr"], positive=env["pos"], latent=den, resolution="custom",
                   width=96, height=96, seed=seed, steps=2)[0]

    a, b, c = sr(7), sr(7), sr(8)
    assert torch.equal(a["samples"], b["samples"]) and not torch.equal(a["samples"], c["samples"])
    # decoders and conditioning encoders are deterministic too
    f1 = run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=den)[0]
    f2 = run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=den)[0]
    assert torch.equal(f1, f2)
    t = torch.arange(16000) / 16000
    audio = {"waveform": torch.sin(2 * math.pi * 200 * t)[None, None], "sample_rate": 16000}
    r1 = run("MagiHumanReferenceAudio", latent=env["lat"], audio_vae=m["audio"], audio=audio)[0]
    r2 = run("MagiHumanReferenceAudio", latent=env["lat"], audio_vae=m["audio"], audio=audio)[0]
    assert torch.equal(r1["magihuman_audio"], r2["magihuman_audio"])


def test_batch_samples_get_their_own_noise(env):
    (lat2,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.3, batch_size=2)
    (out,) = env["run"]("MagiHumanDistilledSampler", model=env["m"]["dit"], positive=env["pos"], latent=lat2, seed=0,
                        steps=1)
    assert torch.isfinite(out["samples"]).all()
    assert not torch.equal(out["samples"][0], out["samples"][1])
