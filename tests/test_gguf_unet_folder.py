"""GGUF files where ComfyUI-GGUF users keep them: models/unet (DiT) and models/clip (text encoder).

ComfyUI registers models/unet in the same folder list as models/diffusion_models (and models/clip with
models/text_encoders), so the loaders list and load them there; the stand-in used without ComfyUI reads the same
folders (the real-server check is in test_comfyui_real_gguf_widget.py)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("gguf")

from magihuman.tiny import tiny_gguf_files, write_tiny_gguf  # noqa: E402


def _options(env, node_id: str, input_id: str) -> list[str]:
    return {i.id: i for i in env.nodes[node_id].define_schema().inputs}[input_id].options


def test_gguf_in_models_unet_and_clip_is_listed_and_loads(node_pack, tmp_path):
    models = tmp_path / "models"
    write_tiny_gguf(models, quants=("Q8_0",))
    files = tiny_gguf_files("Q8_0")
    (models / "unet").mkdir()
    (models / "clip").mkdir()
    dit = shutil.move(str(models / files["distill"]), str(models / "unet" / "magihuman_tiny_distill_unet_Q8_0.gguf"))
    te = shutil.move(str(models / files["text_encoder"]), str(models / "clip" / "t5gemma_tiny_clip_Q8_0.gguf"))
    env = node_pack(models)
    try:
        assert env.compat.folder_paths_for("diffusion_models") == [str(models / "diffusion_models"),
                                                                   str(models / "unet")]
        for node_id in ("MagiHumanDiTLoader", "MagiHumanSRDiTLoader"):
            names = _options(env, node_id, "model_name")
            assert "magihuman_tiny_distill_unet_Q8_0.gguf" in names and "magihuman_tiny_distill/" in names, names
        assert "t5gemma_tiny_clip_Q8_0.gguf" in _options(env, "MagiHumanTextEncoderLoader", "text_encoder")

        for dtype in ("file", "auto"):
            (h,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill_unet_Q8_0.gguf", weight_dtype=dtype)
            assert h.info["path"] == dit
            assert h.model.block.layers[1].attention.linear_qkv.storage.kind == "gguf"
        (te_h,) = env.run("MagiHumanTextEncoderLoader", text_encoder="t5gemma_tiny_clip_Q8_0.gguf",
                          weight_dtype="file")
        assert te_h.info["path"] == te and te_h.model.encoder.layers[0].mlp.up_proj.storage.kind == "gguf"
        with pytest.raises(FileNotFoundError, match="models/diffusion_models"):  # the canonical folder is named
            env.run("MagiHumanDiTLoader", model_name="missing.gguf", weight_dtype="auto", validate=False)
    finally:
        env.close()
