"""Drive the node classes directly (no ComfyUI) on the tiny models, as ComfyUI would call them."""

import importlib
import math

import pytest
import torch


@pytest.fixture(scope="module")
def node_env(node_pack, tiny_dir):
    env = node_pack(tiny_dir)
    yield env
    env.close()


@pytest.fixture(scope="module")
def nodes(node_env):
    return node_env.nodes


def run_node(node_cls, **kw):
    v3 = importlib.import_module(node_cls.__module__.rsplit(".", 1)[0] + ".v3")
    return v3.run_node(node_cls, **kw)


def run(node_cls, **kw):
    return run_node(node_cls, **kw).args


@pytest.fixture(scope="module")
def models(node_env):
    return node_env.load_tiny()


def test_node_ids_and_categories(nodes):
    assert len(nodes) == 27
    for nid, cls in nodes.items():
        s = cls.define_schema()
        assert nid.startswith("MagiHuman") and s.category.startswith("MagiHuman/")
        for inp in s.inputs:  # every widget input explains itself
            if inp.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                assert inp.tooltip, f"{nid}.{inp.id} has no tooltip"
            if inp.io_type in ("INT", "FLOAT"):
                assert inp.min is not None and inp.max is not None, f"{nid}.{inp.id} lacks min/max"


def test_loader_lists_and_variant_guard(nodes, models):
    names = nodes["MagiHumanDiTLoader"].define_schema().inputs[0].options
    assert "magihuman_tiny_distill/" in names and "magihuman_tiny_base.safetensors" in names
    assert models["dit"].info["variant"] == "distill" and models["sr"].info["variant"] == "sr_540p"
    with pytest.raises(ValueError, match="SR DiT Loader"):
        run(nodes["MagiHumanDiTLoader"], model_name="magihuman_tiny_540p_sr/")
    with pytest.raises(ValueError, match="not a super-resolution model"):
        run(nodes["MagiHumanSRDiTLoader"], model_name="magihuman_tiny_distill/")


def test_storage_dtype_takes_the_older_name_and_refuses_others(nodes):
    """A saved API prompt may hold "gguf (file)" (renamed "file"): validate_inputs lets it through as ComfyUI
    would, the model loads keeping what the file holds; an unknown value stops before loading, naming the choices."""
    dit = nodes["MagiHumanDiTLoader"]
    (handle,) = run(dit, model_name="magihuman_tiny_distill/", weight_dtype="gguf (file)")
    assert handle.model.load_info["storage"] == "file"
    with pytest.raises(ValueError) as err:
        run(dit, model_name="magihuman_tiny_distill/", weight_dtype="q3_k")
    choices = ", ".join(["auto", "file", "bf16", "fp16", "fp32", "fp8", "Q8_0", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0"])
    assert str(err.value) == f"MagiHuman DiT Loader: weight_dtype must be one of {choices}, got 'q3_k'"
    for loader in ("MagiHumanSRDiTLoader", "MagiHumanTextEncoderLoader"):
        assert nodes[loader].validate_inputs(weight_dtype="gguf (file)") is True
        assert nodes[loader].validate_inputs(weight_dtype="q3_k") == f"weight_dtype must be one of {choices}, got 'q3_k'"


def test_t2v_distilled_graph(nodes, models):
    pos, neg = run(nodes["MagiHumanTextEncode"], text_encoder=models["te"], prompt="A man smiles and says hello.",
                   negative_prompt="", encode_negative=False)
    assert pos[0][0].shape[1] == 640 and pos[0][1]["magihuman_len"] > 0 and neg[0][1]["magihuman_len"] == 0
    out = run_node(nodes["MagiHumanEmptyAVLatent"], width=70, height=64, seconds=1.0, batch_size=1)
    latent = out.args[0]
    assert "snapped from 70x64" in out.ui.value and "26 frames" in out.ui.value
    assert latent["samples"].shape == (1, 48, 7, 4, 4) and latent["magihuman_audio"].shape == (1, 26, 64)
    (den,) = run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=latent, seed=3, steps=2)
    assert den["magihuman"]["denoised"] and torch.isfinite(den["samples"]).all()
    (again,) = run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=latent, seed=3, steps=2)
    assert torch.equal(den["samples"], again["samples"]) and torch.equal(den["magihuman_audio"], again["magihuman_audio"])
    (images,) = run(nodes["MagiHumanTurboVAEDecode"], turbo_vae=models["turbo"], latent=den)
    assert images.shape == (4 * (7 - 1) + 1, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    (audio,) = run(nodes["MagiHumanAudioDecode"], audio_vae=models["audio"], latent=den, sample_rate="48000")
    assert audio["sample_rate"] == 48000 and audio["waveform"].shape[:2] == (1, 2)
    assert abs(audio["waveform"].shape[-1] - 26 * 2048 * 48000 / 51200) <= 2
    # base sampler without a negative prompt -> clear error
    with pytest.raises(ValueError, match="negative"):
        run(nodes["MagiHumanBaseSampler"], model=models["base"], positive=pos, negative=neg, latent=latent, seed=0, steps=2)


def test_base_cfg_sr_and_wan_decode(nodes, models):
    pos, neg = run(nodes["MagiHumanTextEncode"], text_encoder=models["te"], prompt="Two people talk in a cafe.",
                   negative_prompt="blurry", encode_negative=True)
    (latent,) = run(nodes["MagiHumanEmptyAVLatent"], width=64, height=64, seconds=0.5, batch_size=1)
    (den,) = run(nodes["MagiHumanBaseSampler"], model=models["base"], positive=pos, negative=neg, latent=latent,
                 seed=1, steps=2)
    with pytest.raises(Exception, match="super-resol|sr_540p|SR"):
        run(nodes["MagiHumanBaseSampler"], model=models["sr"], positive=pos, negative=neg, latent=latent, seed=1, steps=1)
    (sr,) = run(nodes["MagiHumanLatentSR"], sr_model=models["sr"], positive=pos, latent=den, resolution="custom",
                width=96, height=128, seed=2, steps=2)
    assert sr["samples"].shape[-2:] == (8, 6) and sr["magihuman"]["stage"] == "sr"
    assert torch.equal(sr["magihuman_audio"], den["magihuman_audio"])  # SR keeps the clean base audio
    (images,) = run(nodes["MagiHumanVideoVAEDecode"], video_vae=models["wan"], latent=sr, tile_size=0)
    assert images.shape[1:] == (128, 96, 3)


def test_ti2v_a2v_split_join(nodes, models):
    pos, _ = run(nodes["MagiHumanTextEncode"], text_encoder=models["te"], prompt="hello", negative_prompt="",
                 encode_negative=False)
    (latent,) = run(nodes["MagiHumanEmptyAVLatent"], width=64, height=64, seconds=2.0, batch_size=1)
    t = torch.arange(51200) / 51200
    audio = {"waveform": torch.sin(2 * math.pi * 220 * t).repeat(1, 3, 1), "sample_rate": 16000}  # 3 ch, 3.2 s
    (a2v,) = run(nodes["MagiHumanReferenceAudio"], latent=latent, audio_vae=models["audio"], audio=audio,
                 trim_to_latent=True)
    assert a2v["magihuman"]["audio_fixed"] and a2v["magihuman_audio"].shape[1] == 50  # 2 s = 102400 samples -> 50 latent steps (official trim)
    (untrimmed,) = run(nodes["MagiHumanReferenceAudio"], latent=latent, audio_vae=models["audio"], audio=audio,
                       trim_to_latent=False)
    assert untrimmed["magihuman_audio"].shape[1] == 80  # the 3.2 s audio sets the length
    image = torch.rand(1, 48, 80, 3)
    (ti2v,) = run(nodes["MagiHumanImageToVideo"], latent=a2v, video_vae=models["wan"], image=image)
    (den,) = run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=ti2v, seed=0, steps=2)
    assert torch.equal(den["magihuman_audio"], a2v["magihuman_audio"])  # A2V audio untouched
    assert torch.equal(den["samples"][:, :, :1], ti2v["magihuman"]["image_latent"][:, :, :1])
    v, a = run(nodes["MagiHumanSplitAVLatent"], latent=den)
    assert a["samples"].shape == (1, 64, 50) and a["type"] == "audio"
    (joined,) = run(nodes["MagiHumanJoinAVLatent"], video_latent=v, audio_latent=a)
    assert torch.equal(joined["magihuman_audio"], den["magihuman_audio"])
    (wave,) = run(nodes["MagiHumanAudioDecode"], audio_vae=models["audio"], latent=a, sample_rate="51200 (true rate)")
    assert wave["sample_rate"] == 51200 and wave["waveform"].shape[-1] == 50 * 2048
    with pytest.raises(ValueError, match="Join AV Latent"):
        run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=a, seed=0, steps=1)
    short = {"samples": a["samples"][:, :, :20], "type": "audio"}
    with pytest.raises(ValueError, match="do not match"):
        run(nodes["MagiHumanJoinAVLatent"], video_latent=v, audio_latent=short)


def test_foreign_inputs_are_refused(nodes, models):
    (latent,) = run(nodes["MagiHumanEmptyAVLatent"], width=64, height=64, seconds=0.5, batch_size=1)
    sd_latent = {"samples": torch.zeros(1, 4, 8, 8)}
    foreign_cond = [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]
    with pytest.raises(ValueError, match="not a MagiHuman audio\\+video latent"):
        run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=foreign_cond, latent=sd_latent, seed=0)
    with pytest.raises(ValueError, match="MagiHuman Text Encode"):
        run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=foreign_cond, latent=latent, seed=0)


def test_interrupt_stops_sampling_and_next_run_works(pack, nodes, models):
    compat = importlib.import_module(f"{pack.__name__}.nodes.compat")
    pos, _ = run(nodes["MagiHumanTextEncode"], text_encoder=models["te"], prompt="hi", negative_prompt="",
                 encode_negative=False)
    (latent,) = run(nodes["MagiHumanEmptyAVLatent"], width=64, height=64, seconds=0.5, batch_size=1)
    before = {k: v.clone() for k, v in latent.items() if isinstance(v, torch.Tensor)}
    compat.request_interrupt()
    with pytest.raises(compat.InterruptedByUser):
        run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=latent, seed=0, steps=3)
    assert all(torch.equal(latent[k], v) for k, v in before.items())
    (den,) = run(nodes["MagiHumanDistilledSampler"], model=models["dit"], positive=pos, latent=latent, seed=0, steps=3)
    assert torch.isfinite(den["samples"]).all()


def test_node_classes_are_siblings_and_declared_once(nodes):
    """ComfyUI caches schema facts (return types, ...) on each registered class and runs locked clones: no
    registered node may inherit another one, and MagiNode.name() stores nothing on the class. Each node is
    declared on its class alone: id, display name, category and help all come from there."""
    classes = list(nodes.values())
    assert not [(a.__name__, b.__name__) for a in classes for b in classes if a is not b and issubclass(a, b)]
    v3 = importlib.import_module(classes[0].__module__.rsplit(".", 1)[0] + ".v3")
    assert v3.MagiNode.declared() == nodes
    for nid, cls in nodes.items():
        before = dict(vars(cls))
        schema = cls.define_schema()
        assert cls.name() == cls.DISPLAY_NAME == schema.display_name and schema.node_id == nid == cls.node_id()
        assert schema.category == f"MagiHuman/{cls.SUBCATEGORY}" and cls.SUBCATEGORY
        assert dict(vars(cls)) == before
    # what ComfyUI 0.8 runs: a locked clone per execution (name + "Clone", the registered class among its bases);
    # the name comes from the table without building the schema (a loader's schema walks the model folders)
    cls = nodes["MagiHumanDiTLoader"]
    clone = type(f"{cls.__name__}Clone", (cls,) + cls.__bases__, dict(cls.__dict__))
    locked = type(clone.__name__, clone.__bases__, dict(clone.__dict__))
    calls = []
    real = cls.define_schema

    def counting():
        calls.append(1)
        return real()

    locked.define_schema = counting
    assert locked.name() == "MagiHuman DiT Loader" and locked.node_id() == "MagiHumanDiTLoader" and not calls
    assert v3.MagiNode.declared() == nodes  # a clone is never declared itself
    assert nodes["MagiHumanSRDiTLoader"].define_schema().outputs[0].io_type == "MAGIHUMAN_SR_DIT"
    assert nodes["MagiHumanDiTLoader"].define_schema().outputs[0].io_type == "MAGIHUMAN_DIT"
