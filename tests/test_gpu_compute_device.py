"""The compute device is the one the host loads a model for, not where its first parameter happens to be: ComfyUI
loads the largest modules first, so under a memory budget the small ones (the DiT's adapter embedders, the text
encoder's norms) stay on the offload device, and a device read off the first parameter would run the whole model
on the CPU with no error. The meta device stands in for the GPU."""

from __future__ import annotations

import importlib

import torch

from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.models.text_encoder import T5GemmaEncoder, tiny_hf_config, tiny_state_dict
from magihuman.pipeline.guards import model_device

GPU = torch.device("meta")


def _partially_loaded_dit() -> MagiHumanDiT:
    """A DiT as a budget-limited load leaves it: the block linears on the device, the small adapter still offloaded."""
    model = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32)
    for layer in model.block.layers:
        layer.to(GPU)
    assert next(model.parameters()).device.type == "cpu"  # adapter.video_embedder.weight: offloaded
    return model


def test_the_dit_computes_on_the_load_device_after_a_partial_load():
    model = _partially_loaded_dit()
    assert model_device(model).type == "cpu"  # nothing says where it computes: its first parameter
    model.compute_device = GPU  # what the loaders and the ComfyUI handle set
    assert model_device(model) == GPU


def test_the_comfyui_handle_names_its_load_device(pack, monkeypatch):
    compat = importlib.import_module(f"{pack.__name__}.nodes.compat")
    monkeypatch.setattr(compat, "devices", lambda kind: (GPU, torch.device("cpu")))
    for kind, model in (("diffusion", _partially_loaded_dit()),
                        ("text_encoder", T5GemmaEncoder.from_config(tiny_hf_config()))):
        handle = compat.ModelHandle(model, kind)
        assert handle.model.compute_device == GPU and model_device(handle.model) == GPU


def test_the_text_encoder_encodes_on_its_compute_device():
    te = T5GemmaEncoder.from_config(tiny_hf_config())
    te.load_state_dict(tiny_state_dict())

    te.tokenize = lambda prompts: [[2, 300, 301]]  # no tokenizer needed
    seen = []

    def forward(ids, mask):
        seen.append(ids.device)
        return torch.zeros(1, ids.shape[1], te.config.hidden_size, device=ids.device)

    te.forward = forward
    te.compute_device = GPU  # its embedding table may still be on the host
    try:
        te.encode(["a man smiles"])
    except NotImplementedError:  # the stand-in device holds no data to copy back; where it ran is what counts
        pass
    assert seen == [GPU]
