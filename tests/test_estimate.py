"""FLOP / memory model: token counts by hand, FLOPs against a brute-force FlopCounterMode run,
parameter counts against a state dict written key by key from the release's shapes, and check_fits messages."""

import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from magihuman.estimate import (
    HOST_ARENA_SLACK_PER_LAYER,
    MemoryEstimateError,
    attention_pairs,
    check_fits,
    device_memory,
    dit_forward_flops,
    dit_param_count,
    dit_weight_bytes,
    estimate,
    token_counts,
)
from magihuman.models.dit_config import DiTConfig

GIB = 2 ** 30


# ----------------------------------------------------------------------------- tokens

@pytest.mark.parametrize("w,h,s,grid,audio", [
    (448, 256, 4, (26, 8, 14), 101),     # official example: 101 frames -> 26 latent frames, 28x16 latent
    (448, 256, 5, (32, 8, 14), 126),     # the official timings' 5 s 256p clip: 3584 video tokens
    (896, 512, 4, (26, 16, 28), 101),    # 540p SR example
    (1920, 1088, 5, (32, 34, 60), 126),  # 1080p SR
    (460, 270, 2, (13, 8, 14), 51),      # snapped down to 448x256
])
def test_token_counts_by_hand(w, h, s, grid, audio):
    g = token_counts(w, h, s)
    assert g["grid"] == grid
    assert g["video_tokens"] == grid[0] * grid[1] * grid[2]
    assert g["audio_tokens"] == audio
    assert (g["width"], g["height"]) == (grid[2] * 32, grid[1] * 32)



@pytest.mark.parametrize("seconds", [0.5, 1.5, 2.02, 0.06, 4])
def test_token_counts_follow_the_pipeline_geometry(seconds):
    """The plan counts the tokens of the latents the pipeline makes (half-frames round up, as empty_latents)."""
    from magihuman import pipeline as P

    lat = P.empty_latents(470, 260, seconds)
    g = token_counts(470, 260, seconds)
    assert (g["width"], g["height"]) == lat.pixel_size == (448, 256)
    assert (g["num_frames"], g["latent_frames"]) == (lat.num_frames, lat.latent_frames)
    assert g["audio_tokens"] == lat.num_frames
    assert g["video_tokens"] == lat.latent_frames * (256 // 32) * (448 // 32)

def test_official_256p_plan_tokens_and_flops():
    plan = estimate("distill_256p", seconds=5, prompt_tokens=100)
    (st,) = plan.stages
    assert (st.video_tokens, st.audio_tokens, st.text_tokens) == (3584, 126, 100)
    assert st.sequence_length == 3810  # the official "~4k tokens per step"
    assert st.steps == 8 and st.forwards_per_step == 1
    # per-token weights 10.91e9: linear part is 2 * 10.91e9 * 3810 per forward, plus attention
    assert 7.0e14 < st.flops_total < 8.0e14  # the quoted 1.1e15 charges all 3 experts (docs/estimate.md)


def test_bad_requests():
    with pytest.raises(ValueError, match="too small"):
        token_counts(16, 256, 4)
    with pytest.raises(ValueError, match="seconds"):
        token_counts(448, 256, 0)
    with pytest.raises(ValueError, match="prompt_tokens"):
        estimate("distill_256p", prompt_tokens=0)
    with pytest.raises(ValueError, match="unknown preset"):
        estimate("nope")
    with pytest.raises(ValueError, match="sr_width and sr_height"):
        estimate("distill_256p", sr_width=896)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        estimate("distill_256p", steps=0)
    with pytest.raises(ValueError, match="local_attention"):
        estimate("sr_1080p", local_attention="flash")
    with pytest.raises(ValueError, match="weight_dtype"):
        estimate("distill_256p", weight_dtype="int3")


# ----------------------------------------------------------------------------- FLOPs vs brute force

def _brute_force_flops(cfg: DiTConfig, grid, num_audio, num_text, frf):
    """Run every matmul of one forward with random data under FlopCounterMode: per-modality expert
    slices in mm layers, attention as explicit per-head q@k^T and p@v over the allowed keys only."""
    t, gh, gw = grid
    per_frame = gh * gw
    nv = t * per_frame
    n = nv + num_audio + num_text
    h, d, hq, hkv = cfg.hidden_size, cfg.head_dim, cfg.hidden_size // cfg.head_dim, cfg.num_query_groups
    segs = [(0, nv), (nv, nv + num_audio), (nv + num_audio, n)]
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    with FlopCounterMode(display=False) as counter:
        x = torch.cat([F.linear(r(nv, cfg.video_in_channels), r(h, cfg.video_in_channels), r(h)),
                       F.linear(r(num_audio, cfg.audio_in_channels), r(h, cfg.audio_in_channels), r(h)),
                       F.linear(r(num_text, cfg.text_in_channels), r(h, cfg.text_in_channels), r(h))])
        for i in range(cfg.num_layers):
            mm = i in cfg.mm_layers
            gelu = i in cfg.gelu7_layers
            inner = 4 * h if gelu else int(h * 4 * 2 / 3) // 4 * 4
            up_w = inner if gelu else 2 * inner

            def lin(inp, out_f):
                if not mm:
                    return F.linear(inp, r(out_f, inp.shape[1]))
                return torch.cat([F.linear(inp[a:b], r(out_f, inp.shape[1])) for a, b in segs])

            qkv = lin(x, hq * d + 2 * hkv * d + hq)
            q = qkv[:, : hq * d].reshape(n, hq, d)
            k = qkv[:, hq * d: (hq + hkv) * d].reshape(n, hkv, d)
            v = qkv[:, (hq + hkv) * d: (hq + 2 * hkv) * d].reshape(n, hkv, d)
            out = torch.empty(n, hq, d)
            kh, vh = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)  # [n, hq, d]
            blocks = []
            if i in cfg.local_attn_layers:
                for f in range(t):
                    lo, hi = max(0, f - frf), min(t - 1, f + frf)
                    keys = torch.cat([torch.arange(lo * per_frame, (hi + 1) * per_frame), torch.arange(nv, n)])
                    blocks.append((torch.arange(f * per_frame, (f + 1) * per_frame), keys))
                blocks.append((torch.arange(nv, n), torch.arange(n)))
            else:
                blocks.append((torch.arange(n), torch.arange(n)))
            for rows, keys in blocks:
                p = torch.einsum("qhd,khd->hqk", q[rows], kh[keys]).softmax(-1)
                out[rows] = torch.einsum("hqk,khd->qhd", p, vh[keys])
            x = x + lin(out.reshape(n, hq * d), h)
            x = x + lin(torch.nn.functional.gelu(lin(x, up_w))[:, :inner], h)
        F.linear(x[:nv], r(cfg.video_in_channels, h))
        F.linear(x[nv: nv + num_audio], r(cfg.audio_in_channels, h))
    return counter.get_total_flops()


@pytest.mark.parametrize("preset", ["tiny", "tiny_sr_1080p"])
def test_forward_flops_match_flop_counter(preset):
    cfg = DiTConfig.preset(preset)
    grid, na, nt, frf = (5, 2, 3), 17, 6, 1
    want = _brute_force_flops(cfg, grid, na, nt, frf)
    got = dit_forward_flops(cfg, grid, na, nt, frame_receptive_field=frf)
    assert got["total"] == want
    assert got["length"] == 5 * 6 + na + nt


def test_attention_pairs_match_engine_mask():
    from magihuman.packing import SequenceLayout, local_attention_allowed

    grid, na, nt = (6, 2, 2), 21, 4
    import inspect
    params = inspect.signature(SequenceLayout).parameters
    if "grid_thw" not in params:
        pytest.skip("SequenceLayout signature changed")
    kwargs = {k: v for k, v in dict(grid_thw=grid, num_audio=na, text_lens=[nt]).items() if k in params}
    try:
        layout = SequenceLayout(**kwargs)
    except TypeError:
        pytest.skip("SequenceLayout signature changed")
    allowed = local_attention_allowed(layout, 2)
    assert int(allowed.sum()) == attention_pairs(grid, na, nt, local=True, frame_receptive_field=2)
    # hand count: frames see 3,4,5,5,4,3 frames of 4 tokens -> 16*24 video pairs, + 24*25 + 25*49
    assert attention_pairs(grid, na, nt, local=True, frame_receptive_field=2) == 16 * 24 + 24 * 25 + 25 * 49
    assert attention_pairs(grid, na, nt, local=False) == 49 * 49


def test_local_attention_reduces_flops_at_1080p():
    kw = dict(sr_width=1920, sr_height=1088, seconds=5)
    s540 = estimate("distill_256p", sr_model="sr_540p", **kw).stages[1]
    s1080 = estimate("distill_256p", sr_model="sr_1080p", **kw).stages[1]
    masked = estimate("distill_256p", sr_model="sr_1080p", local_attention="mask", **kw).stages[1]
    assert s540.video_tokens == s1080.video_tokens == 65280
    assert s1080.flops_total < 0.85 * s540.flops_total
    assert s1080.executed_flops_total == s1080.flops_total  # window mode, 1 frame per block: exact pairs
    assert masked.executed_flops_total == s540.flops_total  # a dense mask computes every pair
    length = 65280 + 126 + 100
    assert masked.local_attention_bytes == 3 * length * length  # bool mask + SDPA's bf16 additive copy
    assert 0 < s1080.local_attention_bytes < masked.local_attention_bytes / 20
    assert s540.local_attention_bytes == 0 and s540.local_attention == "none"
    # up to frf+1 latent frames (1.6 s: 11) every frame sees every frame: no saving, no mask
    short = estimate("distill_256p", sr_model="sr_1080p", local_attention="mask",
                     **dict(kw, seconds=1.6)).stages[1]
    assert short.flops_total == short.executed_flops_total and short.local_attention_bytes == 0


def test_window_block_pairs_match_engine_blocks():
    from magihuman.attention import LocalWindow

    grid, na, nt, frf, b = (9, 2, 3), 7, 5, 2, 3
    hw, rest = grid[1] * grid[2], na + nt
    length = grid[0] * hw + rest
    win = LocalWindow(grid[0] * hw, hw, frf, b)
    want = sum((f1 - f0) * hw * ((k1 - k0) * hw + rest) for f0, f1, k0, k1 in win.blocks()) + rest * length
    assert attention_pairs(grid, na, nt, local=True, frame_receptive_field=frf, block_frames=b) == want


def test_cfg_doubles_forwards_and_batching_pads_text():
    base = estimate("base_256p", seconds=4, prompt_tokens=50, negative_tokens=300, cfg_batched=False).stages[0]
    batched = estimate("base_256p", seconds=4, prompt_tokens=50, negative_tokens=300, cfg_batched=True).stages[0]
    cfg = DiTConfig.preset("base")
    grid = (26, 8, 14)
    pos = dit_forward_flops(cfg, grid, 101, 50)["total"]
    neg = dit_forward_flops(cfg, grid, 101, 300)["total"]
    assert base.steps == 32 and base.forwards_per_step == 2
    assert base.flops_total == 32 * (pos + neg)
    assert batched.flops_total == 32 * 2 * neg
    assert batched.activation_bytes > base.activation_bytes


# ----------------------------------------------------------------------------- parameters

def _spec_state_dict_shapes(cfg: DiTConfig) -> dict:
    """The release's fused layout, written out key by key."""
    h, d = cfg.hidden_size, cfg.head_dim
    hq, hkv = h // d, cfg.num_query_groups
    inner = int(h * 4 * 2 / 3) // 4 * 4
    sd = {
        "adapter.video_embedder.weight": (h, cfg.video_in_channels), "adapter.video_embedder.bias": (h,),
        "adapter.audio_embedder.weight": (h, cfg.audio_in_channels), "adapter.audio_embedder.bias": (h,),
        "adapter.text_embedder.weight": (h, cfg.text_in_channels), "adapter.text_embedder.bias": (h,),
        "adapter.rope.bands": (d // 8,),
        "final_norm_video.weight": (h,), "final_norm_audio.weight": (h,),
        "final_linear_video.weight": (cfg.video_in_channels, h),
        "final_linear_audio.weight": (cfg.audio_in_channels, h),
    }
    for i in range(cfg.num_layers):
        e = 3 if i in cfg.mm_layers else 1
        p = f"block.layers.{i}."
        up, down_in = (4 * h, 4 * h) if i in cfg.gelu7_layers else (2 * inner, inner)
        sd.update({
            p + "attention.pre_norm.weight": (e * h,), p + "attention.q_norm.weight": (e * d,),
            p + "attention.k_norm.weight": (e * d,),
            p + "attention.linear_qkv.weight": (e * ((hq + 2 * hkv) * d + hq), h),
            p + "attention.linear_proj.weight": (e * h, h),
            p + "mlp.pre_norm.weight": (e * h,), p + "mlp.up_gate_proj.weight": (e * up, h),
            p + "mlp.down_proj.weight": (e * h, down_in),
        })
    return sd


def _numel(shapes):
    total = 0
    for s in shapes.values():
        total += torch.empty(s, device="meta").numel()
    return total


@pytest.mark.parametrize("preset", ["tiny", "tiny_sr_1080p"])
def test_param_count_equals_spec_state_dict(preset):
    cfg = DiTConfig.preset(preset)
    p = dit_param_count(cfg)
    assert p["total"] + p["buffers"] == _numel(_spec_state_dict_shapes(cfg))


def test_base_param_count_15b():
    p = dit_param_count(DiTConfig.preset("base"))
    assert 15e9 < p["total"] < 16e9
    assert p["total"] + p["buffers"] == _numel(_spec_state_dict_shapes(DiTConfig.preset("base")))
    assert p["total"] == 15_299_419_136
    # each token multiplies one expert: 10.9e9 block weights per token vs 15.28e9 stored
    assert p["per_token_block_linear"] == 10_912_645_120


def test_weight_bytes_by_dtype():
    from magihuman.estimate import dit_weight_storage

    cfg = DiTConfig.preset("base")
    p = dit_param_count(cfg)
    bf16 = dit_weight_bytes(cfg, torch.bfloat16)
    assert bf16 == 2 * p["block_linear"] + 4 * (p["fp32"] + p["buffers"])
    fp8 = dit_weight_storage(cfg, torch.float8_e4m3fn)  # one byte per (padded) weight, one scale per tensor
    assert bf16 - dit_weight_bytes(cfg, torch.float8_e4m3fn) == p["block_linear"] - fp8.padding_params - fp8.scales
    assert dit_weight_bytes(cfg, "fp8") == dit_weight_bytes(cfg, torch.float8_e4m3fn) == fp8.total


# ----------------------------------------------------------------------------- memory and fitting

def test_activation_memory_terms():
    st = estimate("sr_1080p", seconds=5).stages[1]
    length = 65280 + 126 + 100
    # the largest intermediate (swiglu up projection, bf16 + fp32 copy) alone
    assert st.activation_bytes > 6 * 2 * 13652 * length
    assert st.activation_bytes_math > st.activation_bytes + 40 * 4 * length * length


def test_check_fits_passes_and_raises_with_suggestion():
    plan = estimate("sr_540p", seconds=5)
    check_fits(plan, 1000 * GIB)
    budget = int(plan.stages[0].peak_bytes) + GIB // 2  # the base stage fits, the SR stage does not
    assert plan.peak_device_bytes > budget
    with pytest.raises(MemoryEstimateError) as err:
        check_fits(plan, budget)
    msg = str(err.value)
    assert f"{plan.peak_device_bytes / GIB:.1f}G" in msg and f"{budget / GIB:.1f}G" in msg
    assert "offload" in msg
    m = re.search(r"seconds=(\d+)", msg)
    assert m, msg
    secs = int(m.group(1))
    assert estimate("sr_540p", seconds=secs).peak_device_bytes <= budget
    assert estimate("sr_540p", seconds=secs + 1).peak_device_bytes > budget  # the longest that fits
    m = re.search(r"SR size (\d+)x(\d+)", msg)
    assert m, msg
    sw, sh = int(m.group(1)), int(m.group(2))
    assert sw / sh == pytest.approx(896 / 512, rel=0.1) and sw < 896
    assert estimate("sr_540p", seconds=5, sr_width=sw, sr_height=sh).peak_device_bytes <= budget


def test_check_fits_shrinks_base_when_base_stage_does_not_fit():
    plan = estimate("sr_540p", seconds=5)
    budget = plan.stages[0].peak_bytes - GIB // 4
    with pytest.raises(MemoryEstimateError) as err:
        check_fits(plan, budget)
    m = re.search(r"size (\d+)x(\d+) -> (\d+)x(\d+)", str(err.value))
    assert m, str(err.value)
    w, h, sw, sh = map(int, m.groups())
    assert w < 448 and sw < 896
    assert estimate("sr_540p", seconds=5, width=w, height=h, sr_width=sw, sr_height=sh).peak_device_bytes <= budget
    if plan.stages[0].activation_bytes > 2 * GIB:  # batched CFG doubles the base activations
        unbatched = estimate("sr_540p", seconds=5, cfg_batched=False)
        fits = unbatched.peak_device_bytes <= budget
        assert ("cfg_batched=False" in str(err.value)) == fits


def test_smaller_requests_are_data_and_windows_stay_within_the_limits():
    """The search hands back the requests themselves (check_fits reads the seconds from them, not from its own
    text), and the window it suggests for a long clip is one generate accepts: at most MAX_WINDOW_SECONDS."""
    from magihuman.estimate import smaller_requests, suggest_smaller
    from magihuman.pipeline import MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS

    plan = estimate("distill_256p", seconds=60)
    budget = estimate("distill_256p", seconds=15).peak_device_bytes + GIB // 8
    options = smaller_requests(plan, budget)
    assert [o.kind for o in options] == ["seconds", "size"]
    for o in options:
        assert estimate(**o.request).peak_device_bytes == o.peak_bytes <= budget
    longest = options[0].request["seconds"]
    assert longest > MAX_WINDOW_SECONDS and options[0].label == f"seconds={longest:g}"
    assert suggest_smaller(plan, budget) == [str(o) for o in options]
    with pytest.raises(MemoryEstimateError) as err:
        check_fits(plan, budget)
    assert f"Requests that fit: seconds={longest:g} (~" in str(err.value)
    assert (f"The whole 60 s fits as windows of {MAX_WINDOW_SECONDS:g} s (generate --window-seconds "
            f"{MAX_WINDOW_SECONDS:g};") in str(err.value)
    # a clip shorter than a window may be: no windows suggested
    tight = estimate("distill_256p", seconds=0.5).peak_device_bytes + 1
    assert estimate("distill_256p", seconds=MIN_WINDOW_SECONDS).peak_device_bytes > tight
    with pytest.raises(MemoryEstimateError) as err:
        check_fits(plan, tight)
    assert "seconds=0.5 (~" in str(err.value) and "fits as windows" not in str(err.value)


def test_check_fits_weights_too_large_points_to_offload():
    plan = estimate("distill_256p", seconds=4)
    with pytest.raises(MemoryEstimateError, match="weights alone do not fit") as err:
        check_fits(plan, 20 * GIB)
    assert "offload" in str(err.value) and "fp8" not in str(err.value)  # fp8 files are dequantised on load
    with pytest.raises(MemoryEstimateError, match="host RAM"):
        check_fits(plan, 1000 * GIB, host_memory_bytes=8 * GIB)


def test_format_table_and_device_memory():
    text = estimate("sr_1080p", seconds=5).format()
    assert "65280+126+100" in text and "sr_1080p" in text and "local-attention" in text
    assert str(estimate("tiny")).startswith("MagiHuman plan: tiny")
    assert device_memory("cpu") > 0
    with pytest.raises(ValueError, match="unsupported device"):
        device_memory("xla")


def test_t5gemma_encoder_param_count_matches_module():
    from magihuman.estimate import t5gemma_encoder_param_count
    from magihuman.models.text_encoder import T5GemmaEncoder, T5GemmaEncoderConfig

    small = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)
    model = T5GemmaEncoder(T5GemmaEncoderConfig(**small), device="meta")
    assert t5gemma_encoder_param_count(small) == sum(p.numel() for p in model.parameters())
    assert t5gemma_encoder_param_count() == 9_241_705_984  # the 9B encoder of t5gemma-9b-9b-ul2

    def by_hand(c: dict) -> int:  # embedding; per layer q/k/v/o, gate/up/down, four RMSNorms; final norm
        h, hd = c["hidden_size"], c["head_dim"]
        attn = h * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
        return c["vocab_size"] * h + c["num_hidden_layers"] * (attn + 3 * h * c["intermediate_size"] + 4 * h) + h

    assert t5gemma_encoder_param_count(small) == by_hand(small)
    assert t5gemma_encoder_param_count() == by_hand(dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                                                         num_hidden_layers=42, num_attention_heads=16,
                                                         num_key_value_heads=8, head_dim=256))


def test_estimate_from_config_and_preset_object():
    from magihuman.presets import PRESETS

    cfg = DiTConfig.preset("tiny")
    plan = estimate(cfg, width=128, height=64, seconds=1, steps=3, prompt_tokens=7)
    (st,) = plan.stages
    assert st.grid == (7, 2, 4) and st.audio_tokens == 26
    assert st.flops_total == 3 * dit_forward_flops(cfg, (7, 2, 4), 26, 7)["total"]
    assert st.params == dit_param_count(cfg)["total"]
    assert estimate(PRESETS["sr_540p"]).total_flops == estimate("sr_540p").total_flops


# ----------------------------------------------------------------------------- weight formats (issue 11)

SMALL_K = dict(num_layers=2, hidden_size=256, head_dim=64, num_query_groups=2, text_in_channels=64, mm_layers=[0],
               gelu7_layers=[0])  # rows of 256 / 1024: whole Q4_K blocks; swiglu down_proj rows (680): not


def _resident_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize("config", ["tiny", "small_k"])
@pytest.mark.parametrize("fmt", ["bf16", "fp8", "Q8_0", "Q5_1", "Q4_K", "Q4_0"])
def test_dit_storage_equals_what_the_loader_keeps(tmp_path, config, fmt):
    """dit_weight_storage(cfg, fmt).total == the bytes of every tensor of the model load_dit builds in that format
    (GGUF: converted with convert_dit; rows that are not whole blocks zero-padded to whole blocks, fp8 padded to
    matmul tiles), and its per-layer split too."""
    pytest.importorskip("gguf")
    from magihuman.checkpoints import convert_dit, load_dit, write_tiny_dit
    from magihuman.estimate import dit_weight_storage

    cfg = DiTConfig.preset("tiny") if config == "tiny" else DiTConfig(**SMALL_K)
    src = write_tiny_dit(tmp_path / "dit.safetensors", config=cfg, layout="file", dtype=torch.bfloat16)
    if fmt in ("bf16", "fp8"):
        model = load_dit(src, dtype={"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[fmt], show_progress=False)
    else:
        model = load_dit(convert_dit(src, tmp_path / f"dit_{fmt}.gguf", quant=fmt, show_progress=False),
                         show_progress=False)
    storage = dit_weight_storage(cfg, fmt)
    assert storage.total == _resident_bytes(model)
    assert storage.layers == tuple(_resident_bytes(layer) for layer in model.block.layers)
    assert {m.storage.name for m in model.block_linears()} == {fmt}  # every block linear, down_proj included
    if fmt == "bf16":
        assert storage.padding_params == 0
    else:  # the swiglu down_proj rows (170 / 680 wide) are never whole blocks: padded
        assert storage.padding_params >= cfg.hidden_size * (-cfg.swiglu_intermediate_size % 16)


def test_release_dit_storage_by_format():
    from magihuman.estimate import dit_weight_storage

    cfg = DiTConfig.preset("base")
    p = dit_param_count(cfg)
    bf16 = dit_weight_storage(cfg, "bf16")
    assert bf16.total == dit_weight_bytes(cfg) == 2 * p["block_linear"] + 4 * (p["fp32"] + p["buffers"])
    fp8 = dit_weight_storage(cfg, torch.float8_e4m3fn)
    assert fp8.scales == 4 * 4 * cfg.num_layers  # one fp32 scale per block linear
    # fp8 pads to 16: qkv rows 7208 -> 7216 and swiglu up rows 27304 -> 27312 per expert, down_proj rows 13652 -> 13664
    experts = 32 + 4 * 3 + 4 * 3  # per kind: 32 shared swiglu layers + 4 mm swiglu + 4 mm gelu layers of 3 experts
    assert fp8.padding_params == (8 * 5120 * (4 * 3 + 32 + 4 * 3) + 8 * 5120 * (32 + 4 * 3)
                                  + 12 * 5120 * (32 + 4 * 3)) and experts == 56
    assert fp8.total == p["block_linear"] + fp8.padding_params + fp8.scales + 4 * (p["fp32"] + p["buffers"])
    # GGUF: every block linear in the type; the swiglu down_proj of the 36 swiglu layers (4 of them mm: 3 experts)
    # has 13652-wide rows, zero-padded to 13664 (Q4_0: 32-element blocks)
    q4 = dit_weight_storage(cfg, "Q4_0")
    assert q4.padding_params == (32 + 4 * 3) * 5120 * (13664 - 13652)
    assert q4.compact == (p["block_linear"] + q4.padding_params) // 32 * 18
    assert dit_weight_bytes(cfg, "Q4_0") == q4.total  # GGUF names work in the old function too
    q4k = dit_weight_storage(cfg, "Q4_K")  # 144 bytes / 256 = 18 / 32, but rows padded to 256
    assert q4k.compact == (p["block_linear"] + q4k.padding_params) // 256 * 144 > q4.compact
    assert dit_weight_storage(cfg, "q8_0") == dit_weight_storage(cfg, "Q8_0")
    outside = 4 * (sum((c + 1) * 5120 for c in (192, 64, 3584)) + 2 * 5120 + 5120 * (192 + 64) + 128 // 8)
    assert sum(bf16.layers) + outside == bf16.total  # adapter, heads, RoPE bands: outside the layers, fp32
    assert len(bf16.layers) == 40 and min(bf16.layers[0], bf16.layers[39]) > 2.9 * bf16.layers[4]  # mm: 3 experts


def test_weight_format_names():
    from magihuman.estimate import weight_format

    assert weight_format(torch.bfloat16) == weight_format("bfloat16") == weight_format("BF16") == "bf16"
    assert weight_format(torch.float8_e4m3fn) == weight_format("fp8") == "fp8"
    assert weight_format("q4_k") == "Q4_K" and weight_format(" Q8_0 ") == "Q8_0"
    assert weight_format("q3_k") == "Q3_K"  # a type other tools write: priced as it is stored
    for bad in ("int3", torch.float8_e5m2, None, 8, "file"):
        with pytest.raises(ValueError, match="weight_dtype"):
            weight_format(bad)


def test_dequant_working_bytes():
    from magihuman.estimate import dequant_working_bytes, dit_weight_storage
    from magihuman.quant.gguf import DEQUANT_CHUNK_ELEMENTS

    cfg = DiTConfig.preset("base")
    largest = 3 * 2 * 13652 * 5120  # mm swiglu up_gate_proj: decoded whole, 3 experts
    assert dit_weight_storage(cfg, "bf16").largest_compact == largest
    assert dequant_working_bytes(dit_weight_storage(cfg, "bf16"), torch.bfloat16) == 0
    assert dequant_working_bytes(dit_weight_storage(cfg, "bf16"), torch.float32) == 4 * largest  # a cast copy
    fp8_largest = 3 * 2 * 13656 * 5120  # its rows padded to multiples of 16 per expert (fp8 matmul tiles)
    assert dit_weight_storage(cfg, "fp8").largest_compact == fp8_largest
    assert dequant_working_bytes(dit_weight_storage(cfg, "fp8"), torch.bfloat16) == 2 * 2 * fp8_largest
    q8 = dit_weight_storage(cfg, "Q8_0")
    assert dequant_working_bytes(q8, torch.bfloat16, "cpu") == 2 * largest + 8 * DEQUANT_CHUNK_ELEMENTS
    assert dequant_working_bytes(q8, torch.float32, "cpu") == 4 * largest + 8 * DEQUANT_CHUNK_ELEMENTS


def test_dequant_working_bytes_follow_the_device_and_the_padding():
    """GGUF chunks are 64 Mi elements on a GPU (4 Mi on a CPU): the release up_gate_proj's float32 temporaries
    take 512 MiB on CUDA, which a GPU plan prices (the default) and a CPU plan does not. fp8 holds a second copy
    only where the experts' rows were padded: not for the T5Gemma encoder, whose widths are multiples of 16."""
    from magihuman.estimate import dequant_working_bytes, dit_weight_storage, text_encoder_storage
    from magihuman.quant.gguf import DEVICE_CHUNK_ELEMENTS, chunk_elements

    cfg = DiTConfig.preset("distill")
    largest = 3 * 2 * 13652 * 5120  # the fused up_gate_proj, whole blocks (5120 columns)
    q8 = dit_weight_storage(cfg, "Q8_0")
    assert dequant_working_bytes(q8, torch.bfloat16, "cuda") == 2 * largest + 8 * DEVICE_CHUNK_ELEMENTS
    assert 8 * chunk_elements("cuda") == 512 << 20
    assert dequant_working_bytes(q8) == dequant_working_bytes(q8, torch.bfloat16, "cuda")
    assert dequant_working_bytes(q8, device="cuda") - dequant_working_bytes(q8, device="cpu") == 480 << 20
    for fmt in ("Q8_0", "Q4_K"):
        gpu = estimate("distill_256p", weight_dtype=fmt).stages[0]
        cpu = estimate("distill_256p", weight_dtype=fmt, device_type="cpu").stages[0]
        storage = dit_weight_storage(cfg, fmt)
        assert gpu.dequant_bytes == dequant_working_bytes(storage, torch.bfloat16, "cuda")
        assert cpu.dequant_bytes == dequant_working_bytes(storage, torch.bfloat16, "cpu") < gpu.dequant_bytes
    with pytest.raises(ValueError, match="device_type"):
        estimate("distill_256p", device_type="gpu")
    # fp8: the release DiT's largest weight has padded expert rows (27304 -> 27312): decoded, then sliced
    fp8 = dit_weight_storage(cfg, "fp8")
    assert fp8.decoded_elements == 2 * fp8.largest_compact
    te = text_encoder_storage("fp8")  # largest decoded whole: gate/up_proj [14336, 3584], no padding
    assert te.largest_compact == te.decoded_elements == 14336 * 3584
    assert dequant_working_bytes(te, torch.bfloat16) == 2 * 14336 * 3584


def test_estimate_with_formats_and_block_offload():
    from magihuman.estimate import decode_phase_bytes, dequant_working_bytes, dit_weight_storage, offload_weight_bytes

    plain = estimate("distill_256p").stages[0]
    q4 = estimate("distill_256p", weight_dtype="Q4_0").stages[0]
    storage = dit_weight_storage(DiTConfig.preset("distill"), "Q4_0")
    assert q4.weight_bytes == storage.total and q4.weight_format == "Q4_0"
    assert q4.dequant_bytes == dequant_working_bytes(storage) > 0 == plain.dequant_bytes
    # decoding happens while less than the forward's peak is live: the stage takes the larger of the two
    length, h, inner = q4.sequence_length, 5120, 13652
    live = max(6 * h + 12 * inner, 6 * h + 8 * 4 * h)  # at down_proj: swiglu7 / gelu7 layers
    decoding = int(1.25 * (live * length + 8 * 96 * length)) + q4.dequant_bytes
    assert decode_phase_bytes(DiTConfig.preset("distill"), length, dequant=q4.dequant_bytes) == decoding
    assert q4.activation_bytes == max(plain.activation_bytes, decoding)
    fp8 = estimate("distill_256p", weight_dtype="fp8").stages[0]  # two decoded copies: more than the forward's peak
    assert fp8.activation_bytes == decode_phase_bytes(DiTConfig.preset("distill"), length,
                                                      dequant=fp8.dequant_bytes) > plain.activation_bytes
    assert q4.peak_bytes == storage.total + q4.activation_bytes + q4.latent_bytes
    # block offload: first N layers + everything outside the layers + two streamed layers in flight
    n = 10
    off = estimate("distill_256p", weight_dtype="Q4_0", blocks_on_device=n).stages[0]
    layers = storage.layers
    outside = storage.total - sum(layers)
    in_flight = max(layers[i] + (layers[i + 1] if i + 1 < len(layers) else 0) for i in range(n, len(layers)))
    assert off.weights_on_device == outside + sum(layers[:n]) + in_flight
    assert off.streamed_bytes_per_step == sum(layers[n:])
    assert off.host_weight_bytes == sum(layers[n:]) + (len(layers) - n) * HOST_ARENA_SLACK_PER_LAYER  # pinned arena
    assert off.peak_bytes == off.weights_on_device + off.activation_bytes + off.latent_bytes < q4.peak_bytes
    assert offload_weight_bytes(storage, 40)["device"] == storage.total  # all on the device: no offload
    assert estimate("distill_256p", blocks_on_device=40).stages[0].peak_bytes == plain.peak_bytes
    peaks = [estimate("distill_256p", blocks_on_device=k).stages[0].peak_bytes for k in (0, 5, 20, 39)]
    assert peaks == sorted(peaks)
    text = estimate("distill_256p", weight_dtype="Q4_0", blocks_on_device=n).format()
    assert "DiT weights Q4_0" in text and "10/40 layers on the device" in text and "decoding one Q4_0" in text
    with pytest.raises(ValueError, match="blocks_on_device"):
        estimate("distill_256p", blocks_on_device=-1)
    # CFG run as two passes streams the layers twice per step
    two = estimate("base_256p", cfg_batched=False, blocks_on_device=n).stages[0]
    assert two.streamed_bytes_per_step == 2 * sum(dit_weight_storage(DiTConfig.preset("base")).layers[n:])
    sr = estimate("sr_540p", weight_dtype="bf16", sr_weight_dtype="fp8")
    assert [s.weight_format for s in sr.stages] == ["bf16", "fp8"] and "(sr fp8)" in sr.format()


def test_host_arena_slack_covers_every_tensor_of_a_streamed_layer():
    """The pinned arena pads each tensor of a streamed layer to HOST_ALIGNMENT: the per-layer slack is one
    alignment per tensor of the layer with the most (fp8: 4 block linears, their 4 scales, 4 norms)."""
    from magihuman.models.dit import MagiHumanDiT
    from magihuman.offload import HOST_ALIGNMENT, _layer_tensors, arena_bytes

    cfg = DiTConfig.preset("tiny")
    counts = []
    for fmt in ("bf16", "fp8", "Q8_0"):
        model = MagiHumanDiT(cfg, storage=fmt, device="cpu").init_random_().store_block_linears_()
        for layer in model.block.layers:
            tensors = [getattr(m, n) for m, n in _layer_tensors(layer)]
            sizes = [t.numel() * t.element_size() for t in tensors]
            assert arena_bytes(sizes) - sum(sizes) < HOST_ARENA_SLACK_PER_LAYER
            counts.append(len(tensors))
    assert max(counts) == 12 and HOST_ARENA_SLACK_PER_LAYER == max(counts) * HOST_ALIGNMENT


def test_load_working_bytes():
    from magihuman.estimate import dit_load_working_bytes, dit_weight_storage

    cfg = DiTConfig.preset("distill")
    largest = dit_weight_storage(cfg, "fp8").largest_compact
    assert dit_load_working_bytes(cfg, "fp8", torch.float32) == largest * 12  # fp32 read + fp32 copy + quotient
    # compact targets are read as fp32 whatever the file holds (weights/compact.py fill_stored): a bf16 file adds
    # the reader's conversion buffer, not a smaller read
    assert dit_load_working_bytes(cfg, "fp8", torch.bfloat16) == largest * 12 + (64 << 20)
    assert dit_load_working_bytes(cfg, "fp8", torch.float8_e4m3fn) == 0
    assert dit_load_working_bytes(cfg, "bf16", torch.bfloat16) == 0  # read straight into the model
    assert dit_load_working_bytes(cfg, "bf16", torch.float32) == 64 << 20  # one chunk buffer
    assert dit_load_working_bytes(cfg, "Q4_K", torch.uint8) == 0  # blocks copied out of a .gguf of that type
    q4k = dit_weight_storage(cfg, "Q4_K").largest_compact
    assert dit_load_working_bytes(cfg, "Q4_K", torch.float32) == q4k * 12  # quantised while loading
    assert dit_load_working_bytes(cfg, "Q4_K", torch.bfloat16) == q4k * 12 + (64 << 20)  # the same rule as fp8
    assert dit_load_working_bytes(cfg, "Q4_K", torch.float8_e4m3fn) == q4k * 12 + (64 << 20)


def test_text_encoder_shapes_and_storage_match_the_loaded_module(tmp_path):
    pytest.importorskip("gguf")
    import json

    from magihuman.estimate import t5gemma_encoder_shapes, text_encoder_storage
    from magihuman.loaders.text_encoder import save_encoder_file
    from magihuman.models.text_encoder import T5GemmaEncoder
    from magihuman.tiny import write_tiny_t5gemma

    folder = write_tiny_t5gemma(tmp_path / "te")
    cfg = json.loads((folder / "config.json").read_text())["encoder"]
    model = T5GemmaEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    assert t5gemma_encoder_shapes(cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert t5gemma_encoder_shapes()["encoder.layers.41.mlp.down_proj.weight"] == (3584, 14336)
    assert text_encoder_storage("bf16", cfg).total == _resident_bytes(model)
    fp8 = T5GemmaEncoder.from_pretrained(folder, dtype=torch.float8_e4m3fn)
    assert text_encoder_storage("fp8", cfg).total == _resident_bytes(fp8)
    for quant in ("Q8_0", "Q4_0"):
        path = save_encoder_file(folder, tmp_path / f"te_{quant}.gguf", quant=quant)
        m = T5GemmaEncoder.from_pretrained(path, dtype=torch.bfloat16)
        assert text_encoder_storage(quant, cfg).total == _resident_bytes(m), quant
    # the 9B encoder: bf16 is 2 bytes a parameter; fp8 one (its embedding too) and a scale per tensor
    assert text_encoder_storage("bf16").total == 2 * 9_241_705_984
    assert text_encoder_storage("fp8").total == 9_241_705_984 - 3584 * 4 * 42 - 3584 + 2 * (3584 * 4 * 42 + 3584) \
        + 4 * (7 * 42 + 1)
    plan = estimate("distill_256p", text_encoder_format="Q8_0")
    assert plan.text_encoder_bytes == text_encoder_storage("Q8_0").total and plan.text_encoder_format == "Q8_0"
    assert 0 < plan.text_encode_bytes < GIB // 2
