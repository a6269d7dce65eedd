import importlib
import os

import pytest


@pytest.fixture()
def compat(pack, tmp_path):
    c = importlib.import_module(f"{pack.__name__}.nodes.compat")
    c.set_models_dir(str(tmp_path))
    yield c
    c.set_models_dir(None)


def test_imports_without_comfyui(compat):
    assert compat.HAS_COMFY is False
    assert compat.operations() is __import__("torch").nn


def test_list_models_groups_model_folders(compat, tmp_path):
    dm = tmp_path / "diffusion_models"
    (dm / "distill").mkdir(parents=True)
    (dm / "distill" / "model.safetensors.index.json").write_text("{}")
    (dm / "distill" / "model-00001-of-00002.safetensors").write_bytes(b"x")
    (dm / "magihuman_base_bf16.safetensors").write_bytes(b"x")
    (dm / "notes.txt").write_text("not a model")
    vae = tmp_path / "vae" / "turbo_vae"
    vae.mkdir(parents=True)
    (vae / "TurboV3-Wan22-TinyShallow_7_7.json").write_text("{}")
    (vae / "checkpoint-340000.ckpt").write_bytes(b"x")
    assert compat.list_models(("diffusion_models",)) == ["distill/", "magihuman_base_bf16.safetensors"]
    assert compat.list_models(("vae",)) == ["turbo_vae/"]


def test_resolve_model_refuses_escapes_and_explains_missing(compat, tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="outside the model folder"):
        compat.resolve_model(("vae",), "../secret.safetensors")
    with pytest.raises(FileNotFoundError, match="models/vae"):
        compat.resolve_model(("vae",), "nope.safetensors")
    with pytest.raises(ValueError, match="no model selected"):
        compat.resolve_model(("vae",), "")
    (tmp_path / "vae" / "ok.safetensors").write_bytes(b"x")
    assert compat.resolve_model(("vae",), "ok.safetensors") == os.path.realpath(tmp_path / "vae" / "ok.safetensors")


def test_interrupt_flag_raises_once(compat):
    cb = compat.progress_callback(3)
    cb(1, 3)
    compat.request_interrupt()
    with pytest.raises(compat.InterruptedByUser):
        cb(2, 3)
    cb(3, 3)  # the flag was consumed


def test_comfy_entrypoint_lists_every_node(pack):
    import asyncio

    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    ids = [n.define_schema().node_id for n in nodes]
    v3 = importlib.import_module(f"{pack.__name__}.nodes.v3")
    assert sorted(ids) == sorted(v3.MagiNode.declared()) and len(ids) == 27  # every declared node, once
    assert all(i.startswith("MagiHuman") for i in ids)
