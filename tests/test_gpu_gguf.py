"""GGUF on the GPU: a type without a torch kernel (only gguf's numpy code decodes it) is decoded once, while loading,
never through numpy on every forward; the dequantisation chunk suits the device (a few large chunks on a GPU, small
cache-sized ones on a CPU). The meta device stands in for the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magihuman.checkpoints import load_dit, write_tiny_dit
from magihuman.quant import gguf as q

gguf = pytest.importorskip("gguf")


def _mxfp4_file(tmp_path):
    """The tiny DiT as a GGUF whose block linears are MXFP4 (a type gguf writes and this engine has no torch kernel
    for) where rows are whole 32-blocks, BF16 elsewhere."""
    from magihuman.weights.source import open_source

    src = write_tiny_dit(tmp_path / "t.safetensors", layout="file", dtype=torch.float32)
    state = open_source(src, what="x").read()
    path = tmp_path / "magihuman_distill_mxfp4.gguf"
    writer = gguf.GGUFWriter(str(path), "magihuman")
    writer.add_string("magihuman.variant", "distill")
    for k, t in state.items():
        a = t.numpy()
        if k.endswith(("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight")):
            writer.add_tensor(k, gguf.quants.quantize(a, gguf.GGMLQuantizationType.MXFP4),
                              raw_dtype=gguf.GGMLQuantizationType.MXFP4)
        elif k.endswith("down_proj.weight"):
            writer.add_tensor(k, gguf.quants.quantize(a, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(k, a.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_types_without_a_torch_kernel_are_decoded_once_while_loading(tmp_path, monkeypatch):
    assert q.GGMLType.MXFP4 not in q.TORCH_DEQUANT_TYPES
    path = _mxfp4_file(tmp_path)
    calls = []
    real = q._gguf_dequantize
    monkeypatch.setattr(q, "_gguf_dequantize", lambda raw, qt: calls.append(qt) or real(raw, qt))
    with pytest.warns(RuntimeWarning, match="MXFP4 has no torch kernel"):
        model = load_dit(path, show_progress=False)  # "file": keep what the file holds where a kernel decodes it
    loaded = len(calls)
    assert loaded == 3 * model.config.num_layers  # qkv, proj, up of every layer: decoded while loading
    assert {m.storage.name for m in model.block_linears()} == {"bf16"}
    model.set_compute_dtype(torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model(torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
              torch.randn(1, 3, 64, generator=g), [3])
    assert len(calls) == loaded  # nothing through numpy during the forward
    with pytest.raises(ValueError, match=r"MXFP4 .*cannot be kept in memory: no torch kernel decodes it"):
        load_dit(path, storage="MXFP4", show_progress=False)


def test_the_dequantisation_chunk_suits_the_device(monkeypatch):
    """16 Mi elements of Q8_0: 4 chunks on a CPU (cache-sized temporaries), one kernel launch on a GPU."""
    kernel_calls = []
    info = q.TYPES[q.GGMLType.Q8_0]
    monkeypatch.setitem(q.TYPES, q.GGMLType.Q8_0,
                        info._replace(dequant=lambda b: kernel_calls.append(b.shape[0]) or info.dequant(b)))
    n = 1 << 24
    for device, launches in (("cpu", 4), ("meta", 1)):
        kernel_calls.clear()
        raw = torch.zeros(n // 32 * 34, dtype=torch.uint8, device=device)
        out = q.dequantize(raw, q.GGMLType.Q8_0, (n,), dtype=torch.bfloat16)
        assert out.shape == (n,) and out.device.type == device and len(kernel_calls) == launches, (device,
                                                                                                    kernel_calls)
    assert q.chunk_elements("cuda") == 16 * q.chunk_elements("cpu")
