"""The storage registry and the layers that own a stored weight: parsing, bytes and padding, encode/decode against
independent references, every block linear of a GGUF in the requested type (the swiglu down_proj whose rows are not
whole blocks included), GGUF files of the previous layout, the release sizes, and one registry of format names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from magihuman import estimate as est
from magihuman.checkpoints import convert_dit, load_dit, write_tiny_dit
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.quant import gguf as q
from magihuman.quant.fp8 import FP8_DTYPE, quantize_fp8
from magihuman.storage import (FILE, STORAGES, BlockLinear, CompactEmbedding, convert_choices, load_choices,
                               parse_storage)

ROOT = Path(__file__).resolve().parents[1]


def test_parse_names_aliases_dtypes_and_errors():
    assert parse_storage("bf16") is parse_storage("BFloat16") is parse_storage(torch.bfloat16) is STORAGES["bf16"]
    assert parse_storage("q4_k") is parse_storage(" Q4_K ") is STORAGES["Q4_K"]
    assert parse_storage(torch.float8_e4m3fn) is parse_storage("float8_e4m3fn") is STORAGES["fp8"]
    assert parse_storage("file") is parse_storage("gguf (file)") is FILE  # the older node value
    assert parse_storage(None) is FILE and parse_storage(None, default=STORAGES["fp32"]) is STORAGES["fp32"]
    fp16_file = FILE.keeping(STORAGES["fp16"])
    assert fp16_file.spec == "file:fp16" and parse_storage(fp16_file.spec) == fp16_file and FILE.spec == "file"
    with pytest.raises(ValueError, match=r"unknown weight storage 'q9_9'; choose one of file, bf16, fp16, fp32, fp8 "
                                         r"\(float8_e4m3fn\), Q8_0, Q5_1, Q5_0, Q4_K, Q4_1, Q4_0"):
        parse_storage("q9_9")
    with pytest.raises(ValueError, match="unknown weight storage"):
        parse_storage(torch.int8)
    assert load_choices() == ["file", "bf16", "fp16", "fp32", "fp8", "Q8_0", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0"]
    assert convert_choices() == ["bf16", "fp16", "fp32", "Q8_0", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0"]
    # what "file" keeps: compact storage that decodes on the device; the rest in its default
    assert FILE.resolve(STORAGES["Q4_K"]) is STORAGES["Q4_K"] and FILE.resolve(STORAGES["fp8"]) is STORAGES["fp8"]
    assert FILE.resolve(STORAGES["fp32"]) is STORAGES["bf16"] and fp16_file.resolve(STORAGES["bf16"]) is STORAGES["fp16"]
    assert FILE.resolve(STORAGES["IQ4_XS"]) is STORAGES["bf16"]  # no torch kernel: decoded once, while loading
    assert STORAGES["Q8_0"].resolve(STORAGES["Q4_0"]) is STORAGES["Q8_0"]


def test_bytes_and_padding_of_the_release_widths():
    """qkv (7208 rows per expert) and swiglu up (27304) are not multiples of 16, down_proj rows (13652) not whole
    GGUF blocks: stored zero-padded, and priced so."""
    q8, q4k, fp8 = STORAGES["Q8_0"], STORAGES["Q4_K"], STORAGES["fp8"]
    assert q8.padded(5120, 13652) == (5120, 13664) and q8.nbytes(5120, 13652) == 5120 * 13664 // 32 * 34
    assert q4k.padded(5120, 13652) == (5120, 13824) and q4k.nbytes(5120, 13652) == 5120 * 54 * 144
    assert fp8.padded(7208, 5120) == (7216, 5120) and fp8.nbytes(7208, 5120, 3) == 3 * 7216 * 5120 + 4
    assert fp8.padded(5120, 13652) == (5120, 13664)
    assert STORAGES["bf16"].padded(7208, 13652) == (7208, 13652) and STORAGES["bf16"].nbytes(3, 5) == 30
    assert STORAGES["Q4_K"].bits == 4.5 and STORAGES["Q8_0"].bits == 8.5 and STORAGES["fp8"].bits == 8.0


@pytest.mark.parametrize("name", ["bf16", "fp32", "fp8", "Q8_0", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0"])
def test_block_linear_with_padding_and_experts_matches_an_independent_decode(name):
    """A 3-expert linear of awkward widths (rows 23, cols 70): the stored data is the independent encoding of the
    zero-padded weight, decoding gives the weight back up to the format's rounding, and the forward equals the
    per-segment products with the decoded weight."""
    st = STORAGES[name]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3 * 23, 70, generator=g) * 0.05
    lin = BlockLinear(70, 23, experts=3, storage=st)
    lin.store_weight(w)
    rows, cols = st.padded(23, 70)
    padded = torch.zeros(3, rows, cols)
    padded[:, :23, :70] = w.reshape(3, 23, 70)
    padded = padded.reshape(3 * rows, cols)
    if st.kind == "gguf":
        assert torch.equal(lin.weight, q.encode(padded, st.ggml))  # the blocks of the zero-padded rows
        ref = q.dequantize(lin.weight, st.ggml, (3 * rows, cols)).reshape(3, rows, cols)[:, :23, :70]
    elif st.kind == "fp8":
        w8, scale = quantize_fp8(padded)
        assert lin.weight.dtype == FP8_DTYPE and torch.equal(lin.weight.view(torch.uint8), w8.view(torch.uint8))
        ref = (w8.float() * scale).reshape(3, rows, cols)[:, :23, :70]
    else:
        assert tuple(lin.weight.shape) == (69, 70)
        ref = w.to(st.dtype).float().reshape(3, 23, 70)
    ref = ref.reshape(69, 70)
    dec = lin.decoded_weight(torch.float32)
    assert dec.shape == (69, 70) and torch.equal(dec, ref)
    tol = {"bf16": 0.01, "fp32": 0, "fp8": 0.07, "Q8_0": 0.01, "Q5_1": 0.05, "Q5_0": 0.06, "Q4_K": 0.15,
           "Q4_1": 0.1, "Q4_0": 0.12}[name]
    assert float((dec - w).norm() / w.norm()) <= tol
    x = torch.randn(2, 9, 70, generator=g)
    segs = ((0, 4), (4, 6), (6, 9))
    lin.compute_dtype = torch.float32
    out = lin(x, segs)
    expect = torch.cat([x[:, a:b] @ ref[e * 23:(e + 1) * 23].T for e, (a, b) in enumerate(segs)], dim=1)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bf16", "fp8", "Q8_0", "Q4_K"])
def test_compact_embedding_decodes_only_the_rows_looked_up(name):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(40, 256, generator=g)
    emb = CompactEmbedding(40, 256, storage=name)
    emb.store_weight(table)
    ids = torch.tensor([[3, 0, 39], [5, 5, 7]])
    full = emb.decoded_weight(torch.float32)
    assert torch.equal(emb(ids, torch.float32), full[ids])


def test_model_dtype_and_storage_are_one_setting():
    cfg = DiTConfig.preset("tiny")
    a = MagiHumanDiT(cfg, dtype=torch.float8_e4m3fn)
    b = MagiHumanDiT(cfg, storage="fp8")
    assert {m.storage.name for m in a.block_linears()} == {m.storage.name for m in b.block_linears()} == {"fp8"}
    assert all(torch.equal(x.weight.view(torch.uint8), y.weight.view(torch.uint8))
               for x, y in zip(a.block_linears(), b.block_linears()))
    c = MagiHumanDiT(cfg, storage="Q8_0")
    assert {m.storage.name for m in c.block_linears()} == {"Q8_0"}
    meta = MagiHumanDiT(cfg, storage="Q4_K", device="meta")  # a loader's placeholder: logical shapes
    assert tuple(meta.block.layers[0].mlp.down_proj.weight.shape) == (3 * cfg.hidden_size,
                                                                       cfg.gelu_intermediate_size)


def _mid_1280() -> DiTConfig:
    # the release's awkward widths scaled down: qkv 1802 rows, swiglu up 6824, down_proj 3412 wide
    return DiTConfig(num_layers=2, hidden_size=1280, head_dim=128, num_query_groups=2, mm_layers=[0],
                     gelu7_layers=[0])


def _forward(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    video, audio = torch.randn(1, 48, 2, 8, 8, generator=g), torch.randn(1, 9, 64, generator=g)
    text = torch.randn(1, 11, cfg.text_in_channels, generator=g)
    model.set_compute_dtype(torch.float32)
    with torch.no_grad():
        return model(video, audio, text, [11])[0]


def test_hidden_1280_to_q4_0_quantises_every_block_linear(tmp_path):
    """Issue gate: a DiT with hidden 1280 (swiglu 3412 wide) converted to Q4_0 has no BF16 or F32 block linear, and
    its output error stays within Q4_0's (the down_proj padding costs no accuracy)."""
    gguf = pytest.importorskip("gguf")
    cfg = _mid_1280()
    assert cfg.qkv_out_features == 1802 and cfg.swiglu_intermediate_size == 3412 and 3412 % 32
    src = write_tiny_dit(tmp_path / "mid.safetensors", config=cfg, layout="file", dtype=torch.bfloat16, seed=3)
    path = convert_dit(src, tmp_path / "mid_Q4_0.gguf", quant="Q4_0", show_progress=False)
    reader = gguf.GGUFReader(str(path))
    types = {t.name: q.GGMLType(int(t.tensor_type)).name for t in reader.tensors}
    linears = {k: v for k, v in types.items() if k.endswith(("linear_qkv.weight", "linear_proj.weight",
                                                             "up_gate_proj.weight", "down_proj.weight"))}
    assert len(linears) == 8 and set(linears.values()) == {"Q4_0"}, linears
    down = next(t for t in reader.tensors if t.name == "block.layers.1.mlp.down_proj.weight")
    assert [int(d) for d in down.shape] == [3424, 1280]  # GGUF lists dims innermost first: 3412 padded to 3424
    model = load_dit(path, show_progress=False)
    assert {m.storage.name for m in model.block_linears()} == {"Q4_0"}
    ref = load_dit(src, storage="fp32", show_progress=False)
    err = float((_forward(model) - _forward(ref)).norm() / _forward(ref).norm())
    # the same weights quantised in memory from the bf16 file: the padded file gives exactly that model
    direct = load_dit(src, storage="Q4_0", show_progress=False)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(model.block_linears(), direct.block_linears()))
    assert err <= 1.5 * STORAGES["Q4_0"].rel_error, err


def test_gguf_of_the_previous_layout_still_loads(tmp_path):
    """Files written before every block linear was quantised hold the down_proj as BF16: they load ("file" keeps
    BF16 for those tensors), and asking for Q4_0 quantises them while loading."""
    pytest.importorskip("gguf")
    from magihuman.weights.gguf_file import GGUFSpec, write_gguf
    from magihuman.weights.source import open_source

    cfg = DiTConfig.preset("tiny")
    src = write_tiny_dit(tmp_path / "t.safetensors", config=cfg, layout="file", dtype=torch.float32)
    state = open_source(src, what="x").read()
    specs = []
    for k, t in state.items():
        if k.endswith("down_proj.weight"):
            qt = q.GGMLType.BF16
        elif k.endswith(("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight")):
            qt = q.GGMLType.Q8_0
        else:
            qt = q.GGMLType.F32
        specs.append(GGUFSpec(k, tuple(t.shape), int(qt), (lambda t=t: t)))
    old = tmp_path / "old_Q8_0.gguf"
    write_gguf(old, specs, arch="magihuman", metadata={"magihuman.variant": "distill"})
    m = load_dit(old, show_progress=False)
    kept = {m.block.layers[i].mlp.down_proj.storage.name for i in range(cfg.num_layers)}
    assert kept == {"bf16"} and m.block.layers[0].attention.linear_qkv.storage.name == "Q8_0"
    assert m.load_info["source_dtype"] == "Q8_0"
    m4 = load_dit(old, storage="Q4_0", show_progress=False)
    assert {x.storage.name for x in m4.block_linears()} == {"Q4_0"}


def test_release_sizes_meet_the_targets():
    cfg = DiTConfig.preset("distill")
    gib = 2 ** 30
    assert est.dit_weight_storage(cfg, "Q4_K").total <= 8.6 * gib
    assert est.dit_weight_storage(cfg, "Q8_0").total <= 15.6 * gib
    q4k = est.dit_weight_storage(cfg, "Q4_K")
    # only the swiglu down_proj rows: 32 shared layers + 4 multi-modal ones of 3 experts, 5120 rows each
    assert q4k.padding_params == 5120 * (32 + 4 * 3) * (13824 - 13652)
    bf16 = est.dit_weight_storage(cfg, "bf16")
    assert bf16.padding_params == 0 and bf16.total == 2 * 15_277_834_240 + 4 * 21_584_896 + 4 * 16


# ------------------------------------------------------------------ one registry of format names

FORMAT_WORDS = {"bf16", "fp16", "fp32", "fp8", "bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2",
                "f16", "f32", "half", "q8_0", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q6_k", "q5_k", "q3_k", "q2_k",
                "gguf (file)"}
TORCH_DTYPES = {"bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2", "half"}


def _names_format(node) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip().lower() in FORMAT_WORDS
    return isinstance(node, ast.Attribute) and node.attr in TORCH_DTYPES and \
        isinstance(node.value, ast.Name) and node.value.id == "torch"


def format_tables() -> list[str]:
    """Literal tables (tuple / list / set / dict keys) naming two or more storage formats, by name or torch dtype;
    the registry's entries (names and aliases) count as its one table."""
    found = []
    for folder in ("magihuman", "nodes"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
                    [k for k in node.keys if k is not None] if isinstance(node, ast.Dict) else None
                if elts is not None and sum(map(_names_format, elts)) >= 2:
                    found.append(f"{rel}:{node.lineno}")
    registry = [t for t in found if t.startswith("magihuman/storage/registry.py:")]
    return [t for t in found if t not in registry[1:]]


def test_storage_formats_are_spelled_in_one_registry():
    """Done-when of the storage work: at most four literal tables name formats across the engine and the nodes —
    the registry, the compute dtypes, the safetensors dtype codes (and the GGML type codes, which name types by
    enum, not by string)."""
    files = sorted({t.split(":")[0] for t in format_tables()})
    assert files == ["magihuman/device.py", "magihuman/storage/registry.py", "magihuman/weights/safetensors_io.py"], \
        format_tables()
    assert len(format_tables()) <= 4, format_tables()


def test_frontend_storage_settings_are_the_registry():
    """web/storage.json (what the frontend extension reads) is the registry's, as build_workflows.py writes it."""
    import json

    from magihuman.storage.registry import frontend_settings

    assert json.loads((ROOT / "web" / "storage.json").read_text(encoding="utf-8")) == frontend_settings()
    js = (ROOT / "web" / "js" / "magihuman_gguf.js").read_text(encoding="utf-8")
    assert "storage.json" in js and '"gguf (file)"' not in js and '"file"' not in js  # names come from the file
