"""In the real ComfyUI server (tiny models, CPU): the VAE and text-encoder nodes' ``memory_required`` reaches
ComfyUI's own ``comfy.model_management.load_models_gpu``, with the bytes the engine prices for the inputs.

A probe pack loaded beside this one wraps ``load_models_gpu`` and logs the model and the value of every call.
Skips, saying why, when no harness ComfyUI is set up."""

from __future__ import annotations

import importlib
import json
import re

from tests.comfyui_harness import explain, requires_comfyui, run_workflow_with_packs

pytestmark = requires_comfyui

PROBE = '''
import logging
import comfy.model_management as mm

_load = mm.load_models_gpu


def load_models_gpu(models, memory_required=0, *args, **kwargs):
    for m in models:
        logging.warning("MEMORY_REQUIRED %s %d", type(getattr(m, "model", m)).__name__, int(memory_required))
    return _load(models, memory_required, *args, **kwargs)


mm.load_models_gpu = load_models_gpu
NODE_CLASS_MAPPINGS = {}
'''

PROMPT_TEXT = "A man smiles and says hello."


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def prompt() -> dict:
    return {
        "dit": node("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp32", attention="sdpa",
                    compile=False, compute_dtype="fp32"),
        "te": node("MagiHumanTextEncoderLoader", text_encoder="t5gemma_tiny/", weight_dtype="fp32"),
        "turbo": node("MagiHumanTurboVAELoader", vae_name="turbo_vae_tiny/", weight_dtype="fp32"),
        "wan": node("MagiHumanVideoVAELoader", vae_name="wan2.2_vae_tiny.safetensors", weight_dtype="fp32"),
        "avae": node("MagiHumanAudioVAELoader", vae_name="stable_audio_open_tiny/", weight_dtype="fp32"),
        "enc": node("MagiHumanTextEncode", text_encoder=["te", 0], prompt=PROMPT_TEXT, encode_negative=False,
                    negative_prompt="unused"),
        "latent": node("MagiHumanEmptyAVLatent", width=64, height=64, seconds=1.0, batch_size=1),
        "sample": node("MagiHumanDistilledSampler", model=["dit", 0], positive=["enc", 0], latent=["latent", 0],
                       seed=1, steps=2, shift=5.0),
        "turbo_dec": node("MagiHumanTurboVAEDecode", turbo_vae=["turbo", 0], latent=["sample", 0],
                          offload_frames=False),
        "wan_dec": node("MagiHumanVideoVAEDecode", video_vae=["wan", 0], latent=["sample", 0], tile_size=0),
        "audio_dec": node("MagiHumanAudioDecode", audio_vae=["avae", 0], latent=["sample", 0], sample_rate="48000"),
        "show_turbo": node("PreviewImage", images=["turbo_dec", 0]),
        "show_wan": node("PreviewImage", images=["wan_dec", 0]),
        "show_audio": node("PreviewAudio", audio=["audio_dec", 0]),
    }


def test_memory_required_reaches_load_models_gpu(tmp_path, tiny_dir, node_pack, pack):
    probe = tmp_path / "magihuman_memory_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE)
    wf = tmp_path / "prompt.json"
    wf.write_text(json.dumps(prompt()))
    r = run_workflow_with_packs(wf, tiny_dir, extra_packs=[probe])
    assert r["returncode"] == 0 and not r["extra_packs"][probe.name]["import_failed"], explain(r)
    seen = {}
    for name, value in re.findall(r"MEMORY_REQUIRED (\w+) (\d+)", r["log"]):
        seen.setdefault(name, []).append(int(value))
    # what the engine prices for the same models and inputs (loaded here without ComfyUI)
    env = node_pack(tiny_dir)
    try:
        pipeline = importlib.import_module(f"{pack.__name__}.magihuman.pipeline")
        empty_latents, memory = pipeline.empty_latents, pipeline.memory
        m = env.load_tiny("te", "turbo", "wan", "audio")
        av = empty_latents(64, 64, 1.0)
        expected = {
            "T5GemmaEncoder": memory.text_encode_bytes(m["te"].model, [PROMPT_TEXT]),
            "TurboVAEDecoder": memory.video_decode_bytes(m["turbo"].model, av),
            "WanVAE": memory.video_decode_bytes(m["wan"].model, av),
            "OobleckVAE": memory.audio_decode_bytes(m["audio"].model, av.audio.shape[1]),
        }
    finally:
        env.close()
    for name, value in expected.items():
        assert seen.get(name) == [value], (name, seen, explain(r))
        assert value > 0
