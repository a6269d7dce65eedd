"""T5Gemma encoder: parity with transformers, masks, loading layouts, tokenizer, encode()."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magihuman.errors import CheckpointError
from torch import nn

from magihuman.loaders.text_encoder import encoder_state_dict, save_encoder_file
from magihuman.tiny import write_tiny_t5gemma
from magihuman.models.text_encoder import T5GemmaEncoder, sliding_window_mask, tiny_hf_config, tiny_state_dict
from magihuman.tokenizer import GemmaTokenizer, write_tiny_tokenizer

PROMPTS = {
    "en": "A woman talks to the man and smiles at the video camera.",
    "zh": "一个女人对着镜头微笑，然后开始说话。",
    "ja": "女性がカメラに向かって微笑み、話し始める。",
    "ko": "한 여자가 카메라를 보며 미소 짓고 말하기 시작한다.",
    "de": "Die Frau lächelt, spricht über Öl und Straße und ist fröhlich.",
    "fr": "Une femme élégante sourit à côté de la fenêtre et parle.",
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_t5gemma(tmp_path_factory.mktemp("t5gemma"), seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_folder):
    return T5GemmaEncoder.from_pretrained(tiny_folder, dtype=torch.float32)


def _batch_with_padding():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 450, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf_encoder(state, *, softcap, impl, window_shift=0):
    """transformers' T5GemmaEncoderModel with our tiny weights. ``window_shift``: see the parity tests."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny_hf_config()
    cfg["is_encoder_decoder"] = False
    cfg["encoder"]["attn_logit_softcapping"] = softcap
    cfg["encoder"]["sliding_window"] += window_shift
    model = transformers.T5GemmaEncoderModel(transformers.T5GemmaConfig(**cfg)).eval()
    model.load_state_dict(state, strict=True)
    # transformers 5.x refuses "sdpa" for T5Gemma at load time (it would raise on a soft-cap); set it directly,
    # which is what 4.56 (the official pin) selected by default.
    model.config._attn_implementation = impl
    model.encoder.config._attn_implementation = impl
    return model


# --------------------------------------------------------------------------------- parity
def test_parity_with_transformers_sdpa_no_softcap_padded_batch(tiny_model):
    """Official numerics: SDPA attention, soft-cap not applied. Padded rows differ in length.

    transformers 5.x counts the bidirectional window inclusively (|i-j| <= w) while 4.56 (the official pin)
    and this engine use |i-j| < w, so the 5.x reference gets w - 1.
    """
    hf = _hf_encoder(tiny_model.state_dict(), softcap=None, impl="sdpa", window_shift=-1)
    ids, mask = _batch_with_padding()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    out = tiny_model(ids, mask)
    assert out.dtype == torch.float32 and out.shape == (3, 17, 64)
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)
    # each sample equals its own unpadded run (padding is invisible)
    for b in range(3):
        n = int(mask[b].sum())
        alone = tiny_model(ids[b : b + 1, :n], mask[b : b + 1, :n])[0]
        torch.testing.assert_close(out[b, :n], alone, atol=1e-5, rtol=1e-5)


def test_softcap_option_matches_eager_and_differs_from_sdpa(tiny_model):
    """attn_softcap=True reproduces transformers' eager attention (tanh soft-cap); the default does not."""
    state = tiny_model.state_dict()
    ids, mask = _batch_with_padding()
    eager = _hf_encoder(state, softcap=2.0, impl="eager", window_shift=-1)
    sdpa = _hf_encoder(state, softcap=None, impl="sdpa", window_shift=-1)
    with torch.no_grad():
        ref_eager = eager(input_ids=ids, attention_mask=mask).last_hidden_state
        ref_sdpa = sdpa(input_ids=ids, attention_mask=mask).last_hidden_state
    capped = T5GemmaEncoder.from_config(dict(tiny_hf_config(), encoder=dict(tiny_hf_config()["encoder"],
                                                                            attn_logit_softcapping=2.0)),
                                        attn_softcap=True)
    capped.load_state_dict(state)
    valid = mask.bool()
    torch.testing.assert_close(capped(ids, mask)[valid], ref_eager[valid], atol=1e-5, rtol=1e-5)
    assert (ref_eager - ref_sdpa)[valid].abs().max() > 1e-2  # the cap really changes the result
    assert tiny_model.attn_softcap is False


def test_transformers_loads_our_tiny_folder(tiny_folder, tiny_model):
    """The tiny folder is a real HF checkpoint: transformers reads it (model.encoder.* keys) like the official code."""
    transformers = pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf = transformers.T5GemmaEncoderModel.from_pretrained(tiny_folder, is_encoder_decoder=False,
                                                          dtype=torch.float32).eval()
    ours = tiny_model.state_dict()
    theirs = hf.state_dict()
    assert set(theirs) == set(ours)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    ids = torch.tensor([[2, 300, 301, 302, 303, 304]])  # shorter than the window: no window convention issue
    tiny_model.attn_softcap = True  # transformers 5.x defaults to eager attention, which soft-caps
    try:
        with torch.no_grad():
            torch.testing.assert_close(tiny_model(ids), hf(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    finally:
        tiny_model.attn_softcap = False


# --------------------------------------------------------------------------------- masks
def test_sliding_window_mask_rule():
    m = sliding_window_mask(9, 3)
    expected = torch.tensor([[abs(i - j) < 3 for j in range(9)] for i in range(9)])
    assert torch.equal(m, expected)


def test_sliding_window_receptive_field():
    """Two sliding layers of window w reach 2(w-1) tokens: a change at token 0 moves exactly rows 0..2(w-1)."""
    cfg = tiny_hf_config()
    cfg["encoder"].update(num_hidden_layers=2, layer_types=["sliding_attention"] * 2, sliding_window=4)
    model = T5GemmaEncoder.from_config(cfg)
    model.load_state_dict(tiny_state_dict(cfg, seed=3))
    ids = torch.randint(5, 450, (1, 16), generator=torch.Generator().manual_seed(0))
    ids2 = ids.clone()
    ids2[0, 0] = 7 if ids[0, 0] != 7 else 8
    changed = (model(ids) - model(ids2)).abs().amax(-1)[0] > 0
    assert changed.tolist() == [j <= 6 for j in range(16)]
    # with a full-attention layer every row sees the change
    cfg["encoder"].update(layer_types=["sliding_attention", "full_attention"])
    full = T5GemmaEncoder.from_config(cfg)
    full.load_state_dict(tiny_state_dict(cfg, seed=3))
    assert bool(((full(ids) - full(ids2)).abs().amax(-1) > 0).all())


def test_padding_far_beyond_window_stays_finite(tiny_model):
    ids = torch.zeros(1, 40, dtype=torch.long)
    ids[0, :3] = torch.tensor([2, 300, 301])
    mask = (ids != 0).long()
    out = tiny_model(ids, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :3], tiny_model(ids[:, :3])[0], atol=1e-5, rtol=1e-5)


def test_forward_input_errors(tiny_model):
    with pytest.raises(ValueError, match="no tokens"):
        tiny_model(torch.tensor([[2, 5], [0, 0]]), torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="token ids must lie"):
        tiny_model(torch.tensor([[2, 9999]]))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        tiny_model(torch.tensor([2, 5]))


# --------------------------------------------------------------------------------- config / structure
def test_9b_config_structure_on_meta():
    """The released 9B encoder: alternation, head sizes and parameter count from the config."""
    enc = dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
               num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
               sliding_window=4096, rope_theta=10000.0, attn_logit_softcapping=50.0,
               final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
    model = T5GemmaEncoder.from_config({"encoder": enc, "decoder": enc, "model_type": "t5gemma"}, device="meta")
    cfg = model.config
    assert cfg.layer_types[:4] == ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
    assert model.encoder.layers[0].self_attn.scale == 256 ** -0.5
    h, q, kv, i = 3584, 16 * 256, 8 * 256, 14336
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 4 * h
    expected = 256000 * h + 42 * per_layer + h
    assert sum(p.numel() for p in model.parameters()) == expected
    assert all(k.startswith("encoder.") for k in model.state_dict())


def test_config_rejects_garbage():
    with pytest.raises(ValueError, match="not a T5Gemma config"):
        T5GemmaEncoder.from_config({"foo": 1})
    bad = tiny_hf_config()
    bad["encoder"]["rope_parameters"] = {"rope_type": "yarn", "factor": 2.0}
    with pytest.raises(ValueError, match="rope type"):
        T5GemmaEncoder.from_config(bad)


def test_operations_namespace_is_used():
    """A host's operations build the projections (BlockLinear), the embedding (CompactEmbedding) and the norms, and
    every weight reaches the compute through the host: the stored-weight layers' fetch, the norms' weight hook."""
    from magihuman.storage import BlockLinear, CompactEmbedding

    built, fetched = [], []

    class HostBlockLinear(BlockLinear):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built.append(self)

        def fetch(self, device, dtype):
            fetched.append(self)
            return super().fetch(device, dtype)

    class HostEmbedding(CompactEmbedding):
        def fetch(self, device, dtype):
            fetched.append(self)
            return super().fetch(device, dtype)

    class Ops:
        Linear, Embedding = nn.Linear, nn.Embedding
        BlockLinear, CompactEmbedding = HostBlockLinear, HostEmbedding

    Ops.fetch_weight = staticmethod(lambda m, dtype, device: fetched.append(m) or m.weight.to(dtype))
    model = T5GemmaEncoder.from_config(tiny_hf_config(), operations=Ops, dtype=torch.float32)
    assert len(built) == 4 * 7 and isinstance(model.encoder.embed_tokens, HostEmbedding)
    model.load_state_dict(tiny_state_dict())
    model.encoder.embed_tokens.weight_patches.append(lambda w: w)  # a patched table is decoded through fetch
    model(torch.tensor([[2, 300, 301]]))
    # every weight went through the host: RMSNorms (4 per layer + final), projections (7 per layer), embedding
    assert len(fetched) == (4 * 4 + 1) + 4 * 7 + 1


def test_host_attention_backend_is_used_when_selected():
    """With the default scale (query_pre_attn_scalar == head_dim, as in the 9B) a host-selected kernel runs."""
    from magihuman import attention as attn

    cfg = tiny_hf_config()
    cfg["encoder"]["query_pre_attn_scalar"] = cfg["encoder"]["head_dim"]
    model = T5GemmaEncoder.from_config(cfg)
    model.load_state_dict(tiny_state_dict(cfg))
    ids = torch.randint(5, 450, (1, 12), generator=torch.Generator().manual_seed(2))
    ref = model(ids)
    calls = []
    attn.register_attention_backend(
        "t5gemma_test", lambda q, k, v, m: calls.append(1) or attn.math_attention(q, k, v, m))
    model.set_attention_backend("t5gemma_test")
    out = model(ids)
    assert len(calls) == 4
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------- loading
def _record_reads(monkeypatch) -> list:
    """Names of the tensors whose data the engine's one safetensors reader copies (headers are not reads)."""
    from magihuman.weights import safetensors_io

    log = []
    real = safetensors_io.TensorReader.read_into

    def spy(self, info, dest, *a, **k):
        log.append(info.name)
        return real(self, info, dest, *a, **k)

    monkeypatch.setattr(safetensors_io.TensorReader, "read_into", spy)
    return log


@pytest.mark.parametrize("shards", [1, 3])
def test_load_hf_folder_reads_only_encoder_tensors(tmp_path, shards, monkeypatch):

    folder = write_tiny_t5gemma(tmp_path / "m", seed=0, shards=shards)
    assert (folder / "model.safetensors.index.json").is_file() == (shards > 1)
    read = _record_reads(monkeypatch)
    model = T5GemmaEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    assert read and all(k.startswith("model.encoder.") for k in read)
    ref = tiny_state_dict(seed=0)
    got = model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v.to(torch.bfloat16)), k
    assert model.tokenizer is not None and model.tokenizer.bos_token_id == 2


def test_encoder_state_dict_helper():
    state = tiny_state_dict(seed=1)
    full = {"model." + k: v for k, v in state.items()}
    full.update({"model.decoder.norm.weight": torch.zeros(64), "lm_head.out_proj.weight": torch.zeros(512, 64)})
    model = T5GemmaEncoder.from_config(tiny_hf_config())
    model.load_state_dict(encoder_state_dict(full), strict=True)
    assert torch.equal(model.state_dict()["encoder.layers.3.mlp.up_proj.weight"],
                       state["encoder.layers.3.mlp.up_proj.weight"])


def test_load_accepts_unprefixed_encoder_keys(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config()))
    save_file(tiny_state_dict(seed=5), str(tmp_path / "model.safetensors"))
    write_tiny_tokenizer(tmp_path)
    model = T5GemmaEncoder.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(model.state_dict()["encoder.norm.weight"], tiny_state_dict(seed=5)["encoder.norm.weight"])


def test_single_file_roundtrip(tmp_path, tiny_folder, tiny_model):
    single = tmp_path / "t5gemma_encoder.safetensors"
    save_encoder_file(tiny_folder, single, dtype=torch.float32)
    with pytest.raises(CheckpointError, match="tokenizer"):
        T5GemmaEncoder.from_pretrained(single, dtype=torch.float32)
    model = T5GemmaEncoder.from_pretrained(single, dtype=torch.float32, tokenizer=tiny_folder / "tokenizer.json")
    ids = torch.tensor([[2, 300, 301, 302]])
    torch.testing.assert_close(model(ids), tiny_model(ids), atol=0, rtol=0)
    write_tiny_tokenizer(tmp_path)  # tokenizer files beside the file are found on their own
    model2 = T5GemmaEncoder.from_pretrained(single, dtype=torch.float32)
    assert model2.tokenizer.encode("a man") == tiny_model.tokenizer.encode("a man")


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        T5GemmaEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config()))
    with pytest.raises(CheckpointError, match="safetensors"):
        T5GemmaEncoder.from_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="no T5Gemma encoder tensors"):
        T5GemmaEncoder.from_pretrained(tmp_path)
    bare = tmp_path / "bare" / "enc.safetensors"
    bare.parent.mkdir()
    save_file(tiny_state_dict(), str(bare))
    with pytest.raises(ValueError, match="carries no T5Gemma config"):
        T5GemmaEncoder.from_pretrained(bare)


def test_wrong_tensors_are_listed_before_any_is_read(tmp_path, tiny_folder, monkeypatch):
    from safetensors.torch import save_file

    sd = tiny_state_dict()
    sd.pop("encoder.layers.1.mlp.up_proj.weight")
    sd["encoder.layers.9.mlp.up_proj.weight"] = torch.zeros(2)
    sd["encoder.norm.weight"] = torch.zeros(65)
    bad = tmp_path / "enc.safetensors"
    save_file(sd, str(bad), metadata={"config": json.dumps(tiny_hf_config())})
    reads = _record_reads(monkeypatch)
    with pytest.raises(ValueError) as e:
        T5GemmaEncoder.from_pretrained(bad, dtype=torch.float32, tokenizer=tiny_folder / "tokenizer.json")
    msg = str(e.value)
    assert str(bad) in msg and "1 missing key(s): encoder.layers.1.mlp.up_proj.weight [128, 64]" in msg
    assert "1 unexpected key(s): encoder.layers.9.mlp.up_proj.weight [2]" in msg
    assert "encoder.norm.weight is [65], expected [64]" in msg
    assert reads == []


# --------------------------------------------------------------------------------- tokenizer
def test_tokenizer_matches_autotokenizer(tiny_folder, tiny_model):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_folder))
    ours = tiny_model.tokenizer
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id, ours.token_to_id("<unk>")) == (0, 1, 2, 3)
    assert (hf.pad_token_id, hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    texts = list(PROMPTS.values()) + ["  two  spaces ", "emoji 😀 and <eos> inline", "x"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf(text)["input_ids"], text
        assert ids[0] == 2 and ids[-1] != 1  # <bos> prepended, no <eos> (Gemma's add_bos/add_eos defaults)


def test_tokenizer_follows_add_eos_flag(tmp_path):
    """tokenizer_config.json's add_bos/add_eos flags rebuild the template, as GemmaTokenizerFast in
    transformers 4.56 (the official pin). transformers 5.x ignores the flags and keeps tokenizer.json's
    post-processor, so only the default (<bos> only) is compared with the installed version."""
    transformers = pytest.importorskip("transformers")
    write_tiny_tokenizer(tmp_path)
    text = PROMPTS["de"]
    default = GemmaTokenizer.from_path(tmp_path).encode(text)
    assert default == transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["add_eos_token"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with_eos = GemmaTokenizer.from_path(tmp_path).encode(text)
    assert with_eos == default + [1]
    if int(transformers.__version__.split(".")[0]) < 5:
        assert with_eos == transformers.AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    cfg["add_bos_token"] = False
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert GemmaTokenizer.from_path(tmp_path).encode(text) == default[1:] + [1]


def test_sentencepiece_fallback(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = [PROMPTS["en"], PROMPTS["de"], PROMPTS["fr"]] * 20  # Korean below then needs byte fallback
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        add_dummy_prefix=False, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tok = GemmaTokenizer.from_path(tmp_path)
    assert tok.kind == "sentencepiece" and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0)
    for text in (PROMPTS["ko"], PROMPTS["de"]):
        assert tok.encode(text) == [2] + sp.encode(text)
    assert any(sp.id_to_piece(i).startswith("<0x") for i in sp.encode(PROMPTS["ko"]))


# --------------------------------------------------------------------------------- encode()
def test_encode_pads_to_640_with_fp16_roundtrip(tiny_model):
    prompts = [PROMPTS["en"], PROMPTS["fr"]]
    embeds, lens = tiny_model.encode(prompts)
    assert embeds.shape == (2, 640, 64) and embeds.dtype == torch.float32
    for b, text in enumerate(prompts):
        ids = tiny_model.tokenizer.encode(text)
        assert lens[b] == len(ids)
        ref = tiny_model(torch.tensor([ids]))[0].half().float()
        assert torch.equal(embeds[b, : lens[b]], ref)
        assert torch.count_nonzero(embeds[b, lens[b]:]) == 0
    # the fp16 round trip is real: values are exactly fp16-representable
    assert torch.equal(embeds, embeds.half().float())


def test_encode_trims_long_prompt_with_warning(tiny_model, caplog):
    text = "the man and the woman talk " * 80
    n_tokens = len(tiny_model.tokenizer.encode(text))
    assert n_tokens > 640
    with caplog.at_level(logging.WARNING):
        embeds, lens = tiny_model.encode([text])
    assert lens == [640]
    assert str(n_tokens) in caplog.text and "trim" in caplog.text
    # trimming happens after the full-length run (bidirectional: later tokens influence earlier ones)
    full = tiny_model(torch.tensor([tiny_model.tokenizer.encode(text)]))[0].half().float()
    assert torch.equal(embeds[0], full[:640])
    short, _ = tiny_model.encode([text], max_length=700)
    assert short.shape[1] == 700


@pytest.mark.parametrize("bad", ["", "   ", "\n\t "])
def test_encode_rejects_empty_prompt(tiny_model, bad):
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        tiny_model.encode(["fine prompt", bad])


def test_encode_non_latin_scripts(tiny_model):
    embeds, lens = tiny_model.encode(list(PROMPTS.values()))
    assert torch.isfinite(embeds).all()
    for b, (lang, text) in enumerate(PROMPTS.items()):
        assert lens[b] == len(tiny_model.tokenizer.encode(text)) > 5, lang
        assert embeds[b, : lens[b]].abs().sum() > 0
    # distinct scripts give distinct embeddings
    assert not torch.allclose(embeds[1], embeds[2])


def test_bf16_model_close_to_fp32(tiny_folder, tiny_model):
    bf = T5GemmaEncoder.from_pretrained(tiny_folder, dtype=torch.bfloat16)
    ids = torch.tensor([tiny_model.tokenizer.encode(PROMPTS["en"])])
    out = bf(ids)
    assert out.dtype == torch.float32
    ref = tiny_model(ids)
    rel = (out - ref).norm() / ref.norm()
    assert math.isfinite(rel.item()) and rel < 0.05


def test_compute_dtype_rules(caplog):
    assert T5GemmaEncoder.from_config(tiny_hf_config()).compute_dtype == torch.float32
    assert T5GemmaEncoder.from_config(tiny_hf_config(), dtype=torch.bfloat16, device="meta").compute_dtype \
        == torch.bfloat16
    fp8 = T5GemmaEncoder.from_config(tiny_hf_config(), dtype=torch.float8_e4m3fn, device="meta")
    assert fp8.compute_dtype == torch.bfloat16  # storage-only dtype: activations in bf16
    with caplog.at_level(logging.WARNING):
        T5GemmaEncoder.from_config(tiny_hf_config(), dtype=torch.float16, device="meta")
    assert "overflow fp16" in caplog.text


def test_meta_build_does_not_import_dynamo(tiny_folder):
    """nn.Embedding's normal_ init on the meta device imports torch._dynamo (seconds); loading must not."""
    code = ("import sys, torch\n"
            "from magihuman.models.text_encoder import T5GemmaEncoder, tiny_hf_config\n"
            f"m = T5GemmaEncoder.from_pretrained({str(tiny_folder)!r}, dtype=torch.float32)\n"
            "meta = T5GemmaEncoder.from_config(tiny_hf_config(), device='meta')\n"
            "with torch.device('meta'):\n"
            "    T5GemmaEncoder.from_config(tiny_hf_config())\n"
            "print(meta.encoder.embed_tokens.weight.is_meta, m.encoder.embed_tokens.weight.shape[0],\n"
            "      'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "512", "False"]


def test_embedding_init_kept_off_meta():
    """Off the meta device the embedding keeps torch's own init (random, padding row zero)."""
    torch.manual_seed(0)
    w = T5GemmaEncoder.from_config(tiny_hf_config()).encoder.embed_tokens.weight
    assert w.shape == (512, 64) and torch.all(w[0] == 0) and 0.5 < float(w[1:].std()) < 1.5
