"""No host <-> device copy inside a layer of a resident DiT: the meta device stands in for the GPU (every tensor a
forward makes or moves there is visible), and a dispatch mode counts the copies between devices while each layer
runs. Norm weights, fp8 scales, GGUF decode constants, RoPE bands and the engine's LoRA factors are on the device
(or cached there after the first use), so the second forward copies nothing per layer."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from magihuman.lora import apply_lora
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.weights import safetensors_io as sio

COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class CrossDeviceCopies(TorchDispatchMode):
    """Records every copy whose source and destination are on different devices, with the layer running."""

    def __init__(self):
        super().__init__()
        self.layer = None
        self.copies: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in COPIES:
            src, dst = (args[1], args[0]) if func is torch.ops.aten.copy_.default else (args[0], out)
            if src.device != dst.device:
                self.copies.append((self.layer, src.device.type, dst.device.type, tuple(src.shape)))
        return out


def _lora(path, cfg: DiTConfig):
    """A PEFT LoRA on every block linear of layers 0 and 1 (layer 0 is multi-modal: one LoRA for its experts)."""
    g = torch.Generator().manual_seed(0)
    h = cfg.hidden_size
    tensors = {}
    for i in (0, 1):
        for name, (rows, cols) in {"attention.linear_proj": (h, h), "mlp.down_proj": (h, cfg.gelu_intermediate_size
                                                                                         if i in cfg.gelu7_layers else
                                                                                         cfg.swiglu_intermediate_size)}.items():
            tensors[f"block.layers.{i}.{name}.lora_A.weight"] = torch.randn(4, cols, generator=g) * 0.01
            tensors[f"block.layers.{i}.{name}.lora_B.weight"] = torch.randn(rows, 4, generator=g) * 0.01
    sio.write_file(path, tensors, {})
    return path


@pytest.mark.parametrize("storage", ["bf16", "fp8", "Q8_0"])
def test_a_resident_model_copies_nothing_per_layer(tmp_path, storage):
    cfg = DiTConfig.preset("tiny")
    model = MagiHumanDiT(cfg, storage=storage, compute_dtype=torch.bfloat16)
    apply_lora(model, _lora(tmp_path / "l.safetensors", cfg), 0.5)  # factors read into host memory
    model.to("meta")  # resident on the "device"
    model.compute_device = torch.device("meta")
    mode = CrossDeviceCopies()
    for i, layer in enumerate(model.block.layers):
        layer.register_forward_pre_hook(lambda mod, a, i=i: setattr(mode, "layer", i))
        layer.register_forward_hook(lambda mod, a, o: setattr(mode, "layer", None))
    inputs = (torch.randn(1, 48, 2, 4, 4, device="meta"), torch.randn(1, 5, 64, device="meta"),
              torch.randn(1, 3, 64, device="meta"), [3])
    with torch.no_grad(), mode:
        model(*inputs)
        first = list(mode.copies)
        mode.copies.clear()
        model(*inputs)
    assert {c[0] for c in first if c[0] is not None} == {0, 1}, first  # the LoRA factors went over once...
    in_layers = [c for c in mode.copies if c[0] is not None]
    assert in_layers == [], in_layers  # ...and then never again: nothing is copied per layer
    assert len(mode.copies) <= 1, mode.copies  # per forward: the token coordinates, made on the host
