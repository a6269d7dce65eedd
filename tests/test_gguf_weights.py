"""GGUF weights: converter -> file -> loader round trips, quantised storage used through the one weight path,
metadata and variant inference, bad files, the text encoder's GGUF and fp8 storage, CLI and nodes."""

from __future__ import annotations

import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from magihuman import cli  # noqa: E402
from magihuman.checkpoints import CheckpointError, convert_dit, load_dit, write_tiny_dit  # noqa: E402
from magihuman.loaders.text_encoder import save_encoder_file  # noqa: E402
from magihuman.models.dit import DiTConfig  # noqa: E402
from magihuman.models.text_encoder import T5GemmaEncoder  # noqa: E402
from magihuman.quant import gguf as q  # noqa: E402
from magihuman.tiny import write_tiny_gguf, write_tiny_t5gemma  # noqa: E402
from magihuman.weights import safetensors_io as sio  # noqa: E402
from magihuman.weights.gguf_file import GGUFSpec, write_gguf  # noqa: E402

TINY = DiTConfig.preset("tiny")


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory) -> Path:
    return write_tiny_dit(tmp_path_factory.mktemp("dit") / "magihuman_distill", variant="distill", seed=4)


@pytest.fixture(scope="module")
def reference(dit_folder):
    m = load_dit(dit_folder, dtype=torch.float32, show_progress=False)
    m.set_compute_dtype(torch.float32)
    return m


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 5, 64, generator=g),
            torch.randn(2, 4, 64, generator=g), [4, 2])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _forward(model, seed=0):
    model.set_compute_dtype(torch.float32)
    with torch.no_grad():
        return model(*_inputs(seed))


@pytest.mark.parametrize("quant", ["Q8_0", "Q5_1", "Q4_0"])
def test_dit_round_trip_keeps_blocks_quantised(dit_folder, reference, tmp_path, quant):
    path = convert_dit(dit_folder, tmp_path / f"d_{quant}.gguf", quant=quant, show_progress=False)
    src_sd = {k: v for f in sorted(dit_folder.glob("*.safetensors")) for k, v in sio.load_file(f).items()}
    model = load_dit(path, show_progress=False)
    assert model.variant == "distill" and model.load_info["source_dtype"] == quant
    qt = q.GGMLType[quant]
    block = q.BLOCK_SIZES[qt][0]
    assert TINY.swiglu_intermediate_size % block != 0  # the swiglu down_proj rows are not whole blocks...
    padded = 0
    for mod in model.block_linears():  # ...yet every block linear is kept in the requested type
        key = next(n for n, m in model.named_modules() if m is mod) + ".weight"
        assert mod.storage.kind == "gguf" and mod.weight.dtype == torch.uint8 and mod.storage.ggml == qt
        if key in src_sd:  # the stored blocks are exactly gguf's quantisation of the source weight, zero-padded
            w = src_sd[key].numpy()
            cols = -(-w.shape[1] // block) * block
            padded += cols != w.shape[1]
            wp = np.zeros((w.shape[0], cols), dtype=np.float32)
            wp[:, :w.shape[1]] = w
            assert torch.equal(mod.weight, torch.from_numpy(gguf.quants.quantize(wp, qt)))
    assert padded == TINY.num_layers - len(TINY.gelu7_layers)  # every swiglu down_proj
    ref_sd = reference.state_dict()
    for key, t in model.state_dict().items():  # everything that is not a block linear is kept exactly (F32)
        if not key.endswith(("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight", "down_proj.weight")):
            assert t.dtype == torch.float32 and torch.equal(t, ref_sd[key]), key
    # expert slicing on dequantised whole fused tensors: the kept-quantised model computes exactly what the same
    # weights dequantised at load time compute (mm layers 0 and 3 hold three experts each)
    deq = load_dit(path, storage="fp32", show_progress=False)
    assert all(m.storage.kind == "plain" for m in deq.block_linears())
    out_q, out_d = _forward(model), _forward(deq)
    assert all(torch.equal(a, b) for a, b in zip(out_q, out_d))
    err = _rel(out_q[0], _forward(reference)[0])
    assert err < {"Q8_0": 0.01, "Q5_1": 0.05, "Q4_0": 0.1}[quant], err


def test_q8_0_error_is_within_twice_the_fp8_error(dit_folder, reference, tmp_path):
    """Issue gate: Q8_0 storage error <= 2x the fp8 storage error (tiny config, fp32 compute, random weights)."""
    ref = _forward(reference, seed=3)
    q8 = _forward(load_dit(convert_dit(dit_folder, tmp_path / "q8.gguf", show_progress=False), show_progress=False),
                  seed=3)
    f8 = _forward(load_dit(dit_folder, dtype=torch.float8_e4m3fn, show_progress=False), seed=3)
    for i in range(2):  # video and audio velocity
        assert _rel(q8[i], ref[i]) <= 2 * _rel(f8[i], ref[i]), (i, _rel(q8[i], ref[i]), _rel(f8[i], ref[i]))


def test_fp8_from_gguf_and_bf16_gguf(dit_folder, tmp_path):
    path = convert_dit(dit_folder, tmp_path / "q8.gguf", quant="Q8_0", show_progress=False)
    m8 = load_dit(path, dtype=torch.float8_e4m3fn, show_progress=False)  # dequantised, then fp8 per tensor
    assert m8.block.layers[1].attention.linear_qkv.weight.dtype == torch.float8_e4m3fn
    bf = load_dit(convert_dit(dit_folder, tmp_path / "bf16.gguf", quant="BF16", show_progress=False),
                  show_progress=False)
    assert bf.block.layers[1].attention.linear_qkv.weight.dtype == torch.bfloat16  # BF16 tensors load as plain
    assert bf.load_info["source_dtype"] == "bf16"


def test_quantised_blocks_decoded_to_a_plain_dtype_round_once(dit_folder, tmp_path):
    """A GGUF loaded as bf16 / fp16: the blocks decoded in float32 and rounded once, equal to the float32 load cast."""
    path = convert_dit(dit_folder, tmp_path / "q4.gguf", quant="Q4_K", show_progress=False)
    f32 = load_dit(path, storage="fp32", show_progress=False)
    for plain, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        m = load_dit(path, storage=plain, show_progress=False)
        for (name, a), b in zip(m.named_modules(), f32.modules()):
            if hasattr(a, "decoded_weight"):
                assert a.weight.dtype == dt and torch.equal(a.weight, b.weight.to(dt)), (plain, name)


def test_gguf_writers_name_what_they_can_write(dit_folder, tmp_path):
    """Both converters refuse a storage GGUF cannot hold, with the one message and the choices; nothing is written."""
    choices = "bf16, fp16, fp32, Q8_0, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0"
    with pytest.raises(CheckpointError, match=rf"^cannot write GGUF block linears as fp8; choose one of {choices}$"):
        convert_dit(dit_folder, tmp_path / "d.gguf", quant="fp8", show_progress=False)
    te = write_tiny_t5gemma(tmp_path / "te", seed=2)
    with pytest.raises(CheckpointError, match=rf"^cannot write GGUF projections as fp8; choose one of {choices}$"):
        save_encoder_file(te, tmp_path / "te.gguf", quant="fp8")
    assert not list(tmp_path.glob("*.gguf*"))


def _bare_gguf(path: Path, tensors: dict[str, torch.Tensor], *, arch="magihuman", metadata=None) -> Path:
    specs = [GGUFSpec(k, tuple(v.shape), int(q.GGMLType.F32), (lambda v=v: v)) for k, v in tensors.items()]
    return write_gguf(path, specs, arch=arch, metadata=metadata or {}) and path


def test_variant_from_name_without_metadata_and_from_metadata(dit_folder, tmp_path, caplog):
    sd = load_dit(dit_folder, dtype=torch.float32, show_progress=False).state_dict()
    no_meta = _bare_gguf(tmp_path / "magihuman_540p_sr_custom.gguf", sd)
    m = load_dit(no_meta, show_progress=False)
    assert m.variant == "sr_540p" and "540p" in m.load_info["reason"]
    converted = convert_dit(dit_folder, tmp_path / "anything.gguf", show_progress=False, variant="sr_1080p")
    m = load_dit(converted, show_progress=False)
    assert m.variant == "sr_1080p" and "gguf metadata" in m.load_info["reason"]
    nameless = _bare_gguf(tmp_path / "weights.gguf", sd)  # no metadata, an uninformative name: said, not guessed
    with caplog.at_level(logging.WARNING):
        m = load_dit(nameless, show_progress=False)
    assert m.variant == "distill" and "without variant metadata" in m.load_info["reason"]
    assert any("distill assumed" in r.getMessage() for r in caplog.records)


def test_bad_gguf_files_are_clear_errors(dit_folder, tmp_path):
    good = convert_dit(dit_folder, tmp_path / "good.gguf", show_progress=False)
    data = good.read_bytes()
    cut = tmp_path / "truncated.gguf"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(CheckpointError, match=r"truncated\.gguf.*truncated"):
        load_dit(cut, show_progress=False)
    notgguf = tmp_path / "junk.gguf"
    notgguf.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match=r"junk\.gguf is not a GGUF file"):
        load_dit(notgguf, show_progress=False)
    wan = _bare_gguf(tmp_path / "wan2.2_t2v.gguf", {"blocks.0.self_attn.q.weight": torch.zeros(64, 64),
                                                     "head.head.weight": torch.zeros(16, 64)}, arch="wan")
    with pytest.raises(CheckpointError, match=r"(?s)GGUF of architecture 'wan', not a daVinci-MagiHuman DiT.*"
                                              r"unexpected key\(s\): blocks\.0\.self_attn\.q\.weight"):
        load_dit(wan, show_progress=False)
    sd = load_dit(dit_folder, dtype=torch.float32, show_progress=False).state_dict()
    sd["final_norm_video.weight"] = torch.zeros(64)
    wrong = _bare_gguf(tmp_path / "wrong_shape.gguf", sd)
    with pytest.raises(CheckpointError, match=r"wrong_shape\.gguf does not hold .*\n.*final_norm_video\.weight is "
                                              r"\[64\], expected \[128\]"):
        load_dit(wrong, show_progress=False)
    # an unknown GGML type number in a tensor's info: patch the type field that follows the tensor's dims
    raw = bytearray(data)
    name = b"final_linear_audio.weight"
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, at)[0]
    struct.pack_into("<I", raw, at + 4 + 8 * n_dims, 99)
    unknown = tmp_path / "unknown_type.gguf"
    unknown.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"unknown_type\.gguf.*(unknown GGML quantisation type|cannot read)"):
        load_dit(unknown, show_progress=False)


def test_missing_gguf_package_is_a_clear_error(dit_folder, tmp_path, monkeypatch):
    path = convert_dit(dit_folder, tmp_path / "x.gguf", show_progress=False)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(CheckpointError, match=r"needs the 'gguf' package: pip install gguf"):
        load_dit(path, show_progress=False)


def test_text_encoder_gguf_and_fp8(tmp_path):
    folder = write_tiny_t5gemma(tmp_path / "te", seed=2)
    ref = T5GemmaEncoder.from_pretrained(folder, dtype=torch.float32)
    e_ref, n_ref = ref.encode(["A woman says: hello there."])
    path = save_encoder_file(folder, tmp_path / "solo" / "t5gemma_Q8_0.gguf", quant="Q8_0")
    assert not (path.parent / "tokenizer.json").exists()  # one file: config and tokenizer travel inside
    m = T5GemmaEncoder.from_pretrained(path, dtype=torch.float32)
    attn = m.encoder.layers[0].self_attn
    assert attn.q_proj.storage.kind == "gguf" and m.encoder.embed_tokens.storage.kind == "gguf"
    assert not hasattr(m.encoder.norm, "storage")  # norms are plain parameters
    e, n = m.encode(["A woman says: hello there."])
    assert n == n_ref and _rel(e[0, :n[0]], e_ref[0, :n[0]]) < 0.05
    deq = T5GemmaEncoder.from_pretrained(path, dtype=torch.float32, gguf="dequantize")
    assert torch.equal(deq.encode(["A woman says: hello there."])[0], e)  # same weights, decoded once vs per use
    m8 = T5GemmaEncoder.from_pretrained(folder, dtype=torch.float8_e4m3fn)
    assert attn.q_proj.weight.dtype == torch.uint8
    assert m8.encoder.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    assert m8.encoder.embed_tokens.weight.dtype == torch.float8_e4m3fn  # every stored-weight layer, the table too
    assert m8.encoder.norm.weight.dtype == torch.bfloat16 and m8.compute_dtype == torch.bfloat16
    e8, _ = m8.encode(["A woman says: hello there."])
    assert _rel(e8[0, :n[0]], e_ref[0, :n[0]]) < 0.15
    dit_like = tmp_path / "dit.gguf"
    _bare_gguf(dit_like, {"adapter.video_embedder.weight": torch.zeros(8, 8)}, arch="magihuman")
    with pytest.raises(ValueError, match=r"architecture 'magihuman', not a T5Gemma encoder"):
        T5GemmaEncoder.from_pretrained(dit_like)


def test_cli_convert_and_generate_with_gguf(tmp_path, capsys):
    models = tmp_path / "models"
    written = write_tiny_gguf(models)
    assert set(written) == {"distill_Q8_0", "text_encoder_Q8_0", "distill_Q4_0", "text_encoder_Q4_0"}
    te = models / "text_encoders" / "t5gemma_tiny"
    assert cli.main(["convert", str(te), str(tmp_path / "te_q5.gguf"), "--quant", "Q5_1"]) == 0
    assert cli.main(["convert", str(models / "diffusion_models" / "magihuman_tiny_distill"),
                     str(tmp_path / "dit_q5.gguf"), "--quant", "Q5_0"]) == 0
    assert cli.main(["convert", str(te), str(tmp_path / "x.safetensors"), "--quant", "Q8_0"]) == 2
    capsys.readouterr()
    assert load_dit(tmp_path / "dit_q5.gguf", show_progress=False).load_info["source_dtype"] == "Q5_0"
    for quant in ("Q8_0", "Q4_0"):
        out = tmp_path / f"{quant}.mp4"
        code = cli.main(["generate", "--preset", "tiny", "--prompt", "A man smiles.", "--seconds", "0.5",
                         "--models", str(models), "--dit", str(written[f"distill_{quant}"]),
                         "--text-encoder", str(written[f"text_encoder_{quant}"]), "--output", str(out), "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert out.stat().st_size > 1000
    assert cli.main(["generate", "--preset", "tiny", "--prompt", "x", "--models", str(models), "--dit",
                     str(tmp_path / "nope.gguf"), "--output", str(tmp_path / "o.mp4")]) == 2
    assert "--dit" in capsys.readouterr().err


def test_nodes_list_and_load_gguf(node_pack, tmp_path):
    models = tmp_path / "models"
    write_tiny_gguf(models, quants=("Q8_0",))
    env = node_pack(models)
    try:
        dit_names = {i.id: i for i in env.nodes["MagiHumanDiTLoader"].define_schema().inputs}["model_name"].options
        assert "magihuman_tiny_distill_Q8_0.gguf" in dit_names
        (h,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill_Q8_0.gguf", weight_dtype="auto")
        assert h.model.block.layers[1].attention.linear_qkv.storage.kind == "gguf"
        (h2,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill_Q8_0.gguf", weight_dtype="fp32")
        assert h2.model.block.layers[1].attention.linear_qkv.storage.kind == "plain"  # a dtype dequantises
        (h3,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill_Q8_0.gguf", weight_dtype="Q4_0")
        assert h3.model.block.layers[1].attention.linear_qkv.storage.name == "Q4_0"  # re-quantised while loading
        (te,) = env.run("MagiHumanTextEncoderLoader", text_encoder="t5gemma_tiny_Q8_0.gguf", weight_dtype="file")
        assert te.model.encoder.layers[0].mlp.up_proj.storage.kind == "gguf"
        pos, _ = env.run("MagiHumanTextEncode", text_encoder=te, prompt="A man smiles.", negative_prompt="",
                         encode_negative=False)
        (latent,) = env.run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2)
        (den,) = env.run("MagiHumanDistilledSampler", model=h, positive=pos, latent=latent, seed=1, steps=2)
        assert torch.isfinite(den["magihuman_audio"]).all()
    finally:
        env.close()


@pytest.mark.parametrize("name", ["Q8_0", "Q5_1", "Q4_0", "Q4_K", "BF16"])
def test_writer_encodes_in_row_chunks_with_the_same_bytes(name, monkeypatch):
    """The GGUF writer quantises a few rows at a time (bounded temporaries for the 1.6 GB fp32 expert tensors of
    the release): the bytes equal one quantiser call on the whole tensor."""
    x = torch.randn(300, 512, generator=torch.Generator().manual_seed(3))
    qt = q.GGMLType[name]
    whole = q.encode_q4_k(x) if name == "Q4_K" else q.quantize(x, qt)
    monkeypatch.setattr(q, "ENCODE_CHUNK_BYTES", 4 * 512 * 7)  # 7 rows per chunk: an uneven last one
    assert torch.equal(q.encode(x, qt), whole)
