"""MagiHumanDiT against an independent, slow, per-token transcription of the official semantics."""

import inspect
import math

import pytest
import torch
import torch.nn as nn

from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.storage import BlockLinear, Fetched

F64 = torch.float64


def small_config(**kw):
    base = dict(num_layers=4, hidden_size=64, head_dim=16, num_query_groups=2, video_in_channels=16,
                audio_in_channels=8, text_in_channels=24, mm_layers=[0, 3], gelu7_layers=[0, 1],
                post_norm_layers=[2], local_attn_layers=[])
    base.update(kw)
    return DiTConfig(**base)


@torch.no_grad()
def make_model(cfg, seed=0, **kw):
    """Random weights that exercise everything: O(1) activations, nonzero norm weights and biases,
    and a layer-0 up projection large enough to hit the +-7 activation clamps."""
    m = MagiHumanDiT(cfg, **kw)
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if p.dim() == 1:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        else:
            std = (3.0 if name == "block.layers.0.mlp.up_gate_proj.weight" else 1.0) / math.sqrt(p.shape[1])
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return m


def make_inputs(cfg, b=1, t=3, h=4, w=6, n=7, l=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = cfg.video_in_channels // 4
    return (torch.randn(b, c, t, h, w, generator=g), torch.randn(b, n, cfg.audio_in_channels, generator=g),
            torch.randn(b, l, cfg.text_in_channels, generator=g))


# ------------------------------------------------------------------ the slow reference

def reference_sample(sd, cfg, video, audio, text, style="v2", frf=-1, bf16=False):
    """One sample, official token order [video | audio | text], every linear chosen per token,
    explicit softmax attention; fp64 arithmetic with bf16 rounding at the official cast points."""
    rnd = (lambda x: x.to(torch.bfloat16).to(F64)) if bf16 else (lambda x: x)
    P = {k: v.to(F64) for k, v in sd.items()}
    hidden, d = cfg.hidden_size, cfg.head_dim
    hq, hkv = hidden // d, cfg.num_query_groups
    c, t_n, h_n, w_n = video.shape
    gh, gw = h_n // 2, w_n // 2
    n_audio, l = audio.shape[0], text.shape[0]
    nb = d // 8
    bands = [1.0 / 10000 ** (i / nb) for i in range(nb)]

    toks = []  # (modality, input vector, frame or None, position[3], scale[3])
    for t in range(t_n):
        for i in range(gh):
            for j in range(gw):
                vec = video[:, t, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1)  # (C, ph, pw)
                toks.append((0, vec, t, (t, i - (gh - 1) / 2, j - (gw - 1) / 2), (1.0, 1.0, 1.0)))
    ref_a = ((n_audio - 1) // 4 + 1) if style == "v2" else t_n
    sa = (ref_a - 1) / (n_audio - 1) if n_audio > 1 else 1.0
    for i in range(n_audio):
        toks.append((1, audio[i], None, (i, 0, 0), (sa, 1.0, 1.0)))
    for i in range(l):
        if style == "v2":
            pos, st = i - l, (0.0 if l > 1 else 1.0)
        else:
            pos, st = i, (1.0 / (l - 1) if l > 1 else 1.0)
        toks.append((2, text[i], None, (pos, 0, 0), (st, 1.0, 1.0)))
    n = len(toks)

    emb = {0: "video", 1: "audio", 2: "text"}
    x = [P[f"adapter.{emb[m]}_embedder.weight"] @ v.to(F64) + P[f"adapter.{emb[m]}_embedder.bias"] for m, v, *_ in toks]
    angles = [[pos[a] * sc[a] * bands[k] for a in range(3) for k in range(nb)] for *_, pos, sc in toks]

    def rms(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-6) * (w + 1)

    def rope(v, ang):  # v [heads, D]
        v = v.clone()
        half = 3 * nb
        for p in range(half):
            a, b = v[:, p].clone(), v[:, p + half].clone()
            v[:, p] = a * math.cos(ang[p]) - b * math.sin(ang[p])
            v[:, p + half] = b * math.cos(ang[p]) + a * math.sin(ang[p])
        return v

    for li in range(cfg.num_layers):
        e = 3 if li in cfg.mm_layers else 1
        pre = f"block.layers.{li}."

        def sel(name, mod):
            return P[pre + name].chunk(e)[mod if e > 1 else 0]

        q, k, v, g = [], [], [], []
        for ti, (mod, *_rest) in enumerate(toks):
            hn = rnd(rms(x[ti], sel("attention.pre_norm.weight", mod)))
            qkv = rnd(sel("attention.linear_qkv.weight", mod) @ hn)
            qi = qkv[: hq * d].view(hq, d)
            ki = qkv[hq * d: (hq + hkv) * d].view(hkv, d)
            q.append(rope(rms(qi, sel("attention.q_norm.weight", mod)), angles[ti]))
            k.append(rope(rms(ki, sel("attention.k_norm.weight", mod)), angles[ti]))
            v.append(qkv[(hq + hkv) * d: (hq + 2 * hkv) * d].view(hkv, d))
            g.append(qkv[(hq + 2 * hkv) * d:])
        q, k, v = rnd(torch.stack(q)), rnd(torch.stack(k)), rnd(torch.stack(v))  # [n, heads, D]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if li in cfg.local_attn_layers and frf >= 0:
            for a in range(n):
                for b in range(n):
                    fa, fb = toks[a][2], toks[b][2]
                    if fa is not None and fb is not None and abs(fa - fb) > frf:
                        allowed[a, b] = False
        out = torch.zeros(n, hq, d, dtype=F64)
        for hh in range(hq):
            kv = hh // (hq // hkv)
            s = (q[:, hh] @ k[:, kv].T) / math.sqrt(d)
            out[:, hh] = s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, kv]
        out = rnd(out)
        new_x = []
        for ti, (mod, *_rest) in enumerate(toks):
            gate = torch.sigmoid(g[ti])[:, None] if cfg.enable_attn_gating else 1.0
            o = rnd((out[ti] * gate).reshape(-1))
            a = rnd(sel("attention.linear_proj.weight", mod) @ o)
            if li in cfg.post_norm_layers:
                a = rnd(rms(a, sel("attn_post_norm.weight", mod)))
            xi = x[ti] + a
            hn = rnd(rms(xi, sel("mlp.pre_norm.weight", mod)))
            u = rnd(sel("mlp.up_gate_proj.weight", mod) @ hn)
            if li in cfg.gelu7_layers:
                z = u.clamp(max=7.0)
                act = z * torch.sigmoid(1.702 * z)
            else:
                gate, lin = u[0::2].clamp(max=7.0), u[1::2].clamp(-7.0, 7.0)
                act = gate * torch.sigmoid(1.702 * gate) * (lin + 1)
            m = rnd(sel("mlp.down_proj.weight", mod) @ rnd(act))
            if li in cfg.post_norm_layers:
                m = rms(m, sel("mlp_post_norm.weight", mod))
            new_x.append(xi + m)
        x = new_x

    vid = torch.zeros(c, t_n, h_n, w_n, dtype=F64)
    nv = t_n * gh * gw
    for ti in range(nv):
        o = P["final_linear_video.weight"] @ rms(x[ti], P["final_norm_video.weight"])  # (ph, pw, C)
        t, rest = divmod(ti, gh * gw)
        i, j = divmod(rest, gw)
        vid[:, t, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = o.view(2, 2, c).permute(2, 0, 1)
    aud = torch.stack([P["final_linear_audio.weight"] @ rms(x[nv + i], P["final_norm_audio.weight"])
                       for i in range(n_audio)])
    return vid, aud


def _rel(a, b):
    return float((a.to(F64) - b.to(F64)).abs().max() / b.abs().max())


# ------------------------------------------------------------------ whole-forward parity

@pytest.mark.parametrize("style", ["v2", "v1"])
def test_forward_matches_reference_fp32_compute(style):
    cfg = small_config()
    m = make_model(cfg, compute_dtype=torch.float32)
    v, a, t = make_inputs(cfg, n=7)  # N = 7 != 4(T-1)+1 = 9
    with torch.no_grad():
        ov, oa = m(v, a, t, [5], coords=style)
    rv, ra = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0], style)
    assert ov.dtype == oa.dtype == torch.float32 and ov.shape == v.shape and oa.shape == (1, 7, cfg.audio_in_channels)
    torch.testing.assert_close(ov[0].to(F64), rv, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(oa[0].to(F64), ra, atol=2e-4, rtol=1e-4)


def test_forward_without_attention_gating():
    cfg = small_config(enable_attn_gating=False)
    m = make_model(cfg, compute_dtype=torch.float32)
    assert m.block.layers[1].attention.linear_qkv.weight.shape == ((4 + 2 * 2) * 16, 64)
    v, a, t = make_inputs(cfg)
    with torch.no_grad():
        ov, oa = m(v, a, t, [4])
    rv, ra = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0, :4])
    torch.testing.assert_close(ov[0].to(F64), rv, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(oa[0].to(F64), ra, atol=2e-4, rtol=1e-4)


def test_forward_single_text_token_and_single_audio_token():
    cfg = small_config()
    m = make_model(cfg, compute_dtype=torch.float32)
    v, a, t = make_inputs(cfg, n=1, l=3)
    for style in ("v2", "v1"):
        with torch.no_grad():
            ov, oa = m(v, a, t, [1], coords=style)
        rv, ra = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0, :1], style)
        assert torch.isfinite(ov).all() and torch.isfinite(oa).all()
        torch.testing.assert_close(ov[0].to(F64), rv, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(oa[0].to(F64), ra, atol=2e-4, rtol=1e-4)


def test_forward_matches_reference_bf16_compute():
    cfg = small_config()
    m = make_model(cfg)  # default: official bf16 numerics
    assert m.compute_dtype == torch.bfloat16
    v, a, t = make_inputs(cfg, n=9)
    with torch.no_grad():
        ov, oa = m(v, a, t, [5])
    rv, ra = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0], "v2", bf16=True)
    rv32, _ = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0], "v2", bf16=False)
    assert _rel(ov[0], rv) < 2e-2 and _rel(oa[0], ra) < 2e-2
    m.set_compute_dtype(torch.float32)
    with torch.no_grad():
        ov32, _ = m(v, a, t, [5])
    assert _rel(ov32[0], rv32) < 1e-5
    assert _rel(ov[0], ov32[0]) > 1e-4  # the default mode really computes in bf16


def test_local_attention_layers_match_reference():
    cfg = small_config(local_attn_layers=[1, 2])
    m = make_model(cfg, compute_dtype=torch.float32)
    v, a, t = make_inputs(cfg, t=5, h=2, w=4, n=6, l=3)
    sd = m.state_dict()
    with torch.no_grad():
        ov, oa = m(v, a, t, [3], coords="v1", frame_receptive_field=1)
        ov_full, _ = m(v, a, t, [3], coords="v1", frame_receptive_field=-1)
    rv, ra = reference_sample(sd, cfg, v[0], a[0], t[0], "v1", frf=1)
    torch.testing.assert_close(ov[0].to(F64), rv, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(oa[0].to(F64), ra, atol=2e-4, rtol=1e-4)
    rv_full, _ = reference_sample(sd, cfg, v[0], a[0], t[0], "v1", frf=-1)
    torch.testing.assert_close(ov_full[0].to(F64), rv_full, atol=2e-4, rtol=1e-4)
    assert _rel(rv, rv_full) > 1e-3  # the local window really changes the result
    # a model without local layers ignores frame_receptive_field
    m2 = make_model(small_config(), compute_dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(m2(v, a, t, [3], frame_receptive_field=0)[0], m2(v, a, t, [3], frame_receptive_field=-1)[0])


# ------------------------------------------------------------------ batching

@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_batch_with_different_text_lengths_equals_single_runs(compute_dtype):
    cfg = small_config(local_attn_layers=[1])
    m = make_model(cfg, compute_dtype=compute_dtype)
    v, a, t = make_inputs(cfg, b=2, t=4, n=6, l=6)
    t[1, 2:] = float("nan")  # garbage beyond text_lens[1]
    with torch.no_grad():
        bv, ba = m(v, a, t, [6, 2], frame_receptive_field=1)
        for i, n in enumerate([6, 2]):
            sv, sa = m(v[i:i + 1], a[i:i + 1], t[i:i + 1, :n], [n], frame_receptive_field=1)
            tol = dict(atol=1e-5, rtol=1e-5) if compute_dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(bv[i:i + 1], sv, **tol)
            torch.testing.assert_close(ba[i:i + 1], sa, **tol)
    assert torch.isfinite(bv).all() and torch.isfinite(ba).all()


def test_garbage_in_padded_text_rows_does_not_matter():
    cfg = small_config()
    m = make_model(cfg, compute_dtype=torch.float32)
    v, a, t = make_inputs(cfg, b=2, l=7)
    lens = [7, 3]
    with torch.no_grad():
        ref = m(v, a, t, lens)
        for garbage in (float("nan"), float("inf"), 1e30):
            t2 = t.clone()
            t2[1, 3:] = garbage
            out = m(v, a, t2, lens)
            torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=0)
        # rows beyond max(text_lens) are not even read
        short = m(v, a, t[:, :7], lens)
        assert torch.equal(short[0], ref[0])


# ------------------------------------------------------------------ experts and operations

def test_expert_linear_matches_per_token_loop():
    g = torch.Generator().manual_seed(0)
    lin = BlockLinear(8, 5, experts=3, storage="fp32")
    lin.weight.data.copy_(torch.randn(15, 8, generator=g))
    x = torch.randn(2, 9, 8, generator=g)
    segs = ((0, 4), (4, 6), (6, 9))
    for cd in (torch.float32, torch.bfloat16):
        lin.compute_dtype = cd
        out = lin(x, segs)
        assert out.dtype == cd and out.shape == (2, 9, 5)
        w = lin.weight.detach().to(cd)
        for b in range(2):
            for n in range(9):
                mod = 0 if n < 4 else 1 if n < 6 else 2
                expect = (w[mod * 5:(mod + 1) * 5].double() @ x[b, n].to(cd).double())
                torch.testing.assert_close(out[b, n].double(), expect, atol=1e-5 if cd == torch.float32 else 2e-2,
                                           rtol=1e-5 if cd == torch.float32 else 1e-2)


def test_operations_namespace_block_linear_is_used():
    """A host's operations.BlockLinear (e.g. ComfyUI's offloading cast) builds every block linear, and each weight
    reaches its matmul through the host's fetch / release pair, once per linear per forward."""
    calls = []

    class HostBlockLinear(BlockLinear):
        def fetch(self, device, dtype):
            calls.append(("fetch", self))
            got = super().fetch(device, dtype)
            return Fetched(got.data, got.scale, got.bias, token=self)

        def release(self, token):
            calls.append(("release", token))

    class Ops:
        Linear = nn.Linear
        BlockLinear = HostBlockLinear

    cfg = small_config()
    m = MagiHumanDiT(cfg, operations=Ops).init_random_(3)
    assert all(type(mod) is HostBlockLinear for mod in m.block_linears())
    v, a, t = make_inputs(cfg)
    with torch.no_grad():
        m(v, a, t, [5])
    assert len(calls) == 2 * 4 * cfg.num_layers  # qkv, proj, up, down per layer, fetched and released
    assert [c[0] for c in calls[:2]] == ["fetch", "release"] and calls[0][1] is calls[1][1]


# ------------------------------------------------------------------ layout, loading, construction

def expected_official_shapes(cfg):
    h, d = cfg.hidden_size, cfg.head_dim
    hq, hkv = h // d, cfg.num_query_groups
    qkv = (hq + 2 * hkv) * d + hq
    inner_swiglu = int(h * 4 * 2 / 3) // 4 * 4
    shapes = {
        "adapter.video_embedder.weight": (h, cfg.video_in_channels), "adapter.video_embedder.bias": (h,),
        "adapter.text_embedder.weight": (h, cfg.text_in_channels), "adapter.text_embedder.bias": (h,),
        "adapter.audio_embedder.weight": (h, cfg.audio_in_channels), "adapter.audio_embedder.bias": (h,),
        "adapter.rope.bands": (d // 8,),
        "final_norm_video.weight": (h,), "final_norm_audio.weight": (h,),
        "final_linear_video.weight": (cfg.video_in_channels, h), "final_linear_audio.weight": (cfg.audio_in_channels, h),
    }
    for i in range(cfg.num_layers):
        e = 3 if i in cfg.mm_layers else 1
        p = f"block.layers.{i}."
        up, inner = (4 * h, 4 * h) if i in cfg.gelu7_layers else (2 * inner_swiglu, inner_swiglu)
        shapes.update({
            p + "attention.pre_norm.weight": (e * h,), p + "attention.q_norm.weight": (e * d,),
            p + "attention.k_norm.weight": (e * d,), p + "attention.linear_qkv.weight": (e * qkv, h),
            p + "attention.linear_proj.weight": (e * h, hq * d), p + "mlp.pre_norm.weight": (e * h,),
            p + "mlp.up_gate_proj.weight": (e * up, h), p + "mlp.down_proj.weight": (e * h, inner),
        })
        if i in cfg.post_norm_layers:
            shapes[p + "attn_post_norm.weight"] = (e * h,)
            shapes[p + "mlp_post_norm.weight"] = (e * h,)
    return shapes


@pytest.mark.parametrize("preset", ["base", "sr_1080p"])
def test_state_dict_is_official_fused_layout_on_meta(preset):
    cfg = DiTConfig.preset(preset)
    m = MagiHumanDiT(cfg, device="meta")
    sd = m.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_official_shapes(cfg)
    assert sd["block.layers.0.attention.linear_qkv.weight"].shape == (3 * 7208, 5120)
    assert sd["block.layers.5.mlp.up_gate_proj.weight"].shape == (2 * 13652, 5120)
    assert sd["block.layers.5.attention.linear_qkv.weight"].shape == (7208, 5120)
    for k, v in sd.items():
        assert v.device.type == "meta"
        block_linear_key = k.startswith("block.") and k.endswith(("linear_qkv.weight", "linear_proj.weight",
                                                                  "up_gate_proj.weight", "down_proj.weight"))
        assert v.dtype == (torch.bfloat16 if block_linear_key else torch.float32), k


def test_post_norm_keys_use_official_names():
    sd = MagiHumanDiT(small_config(), device="meta").state_dict()
    assert set(expected_official_shapes(small_config())) == set(sd)
    assert "block.layers.2.attn_post_norm.weight" in sd and "block.layers.1.attn_post_norm.weight" not in sd


def test_dtype_applies_to_block_linears_only():
    m = MagiHumanDiT(small_config(), dtype=torch.float32, device="meta")
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    m = MagiHumanDiT(small_config(), dtype=torch.float16, device="meta")
    assert m.block.layers[1].mlp.down_proj.weight.dtype == torch.float16
    assert m.adapter.text_embedder.weight.dtype == m.final_linear_audio.weight.dtype == torch.float32
    assert m.block.layers[1].mlp.pre_norm.weight.dtype == torch.float32


def test_strict_load_round_trip_and_meta_assign():
    cfg = small_config()
    a = make_model(cfg, seed=0, compute_dtype=torch.float32)
    b = make_model(cfg, seed=5, compute_dtype=torch.float32)
    sd = a.state_dict()
    b.load_state_dict(sd, strict=True)
    meta = MagiHumanDiT(cfg, device="meta", compute_dtype=torch.float32)
    meta.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True, assign=True)
    v, x, t = make_inputs(cfg)
    with torch.no_grad():
        ref = a(v, x, t, [4])
        for other in (b, meta):
            out = other(v, x, t, [4])
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    with pytest.raises(RuntimeError, match="Missing key"):
        b.load_state_dict({k: v for k, v in sd.items() if k != "adapter.rope.bands"}, strict=True)


def test_default_rope_bands_fill_a_missing_buffer():
    cfg = small_config()
    bands = MagiHumanDiT.default_rope_bands(cfg)
    assert bands.dtype == torch.float32
    torch.testing.assert_close(bands.double(), torch.tensor([1 / 10000 ** (i / 2) for i in range(2)], dtype=F64))
    full = make_model(cfg)
    assert torch.equal(full.adapter.rope.bands, bands)
    # a meta-built model loaded from a file without the buffer: fill it, then it runs like the full one
    meta = MagiHumanDiT(cfg, device="meta")
    sd = {k: v for k, v in full.state_dict().items() if k != "adapter.rope.bands"}
    missing = meta.load_state_dict(sd, strict=False, assign=True).missing_keys
    assert missing == ["adapter.rope.bands"]
    meta.reset_rope_bands_(device="cpu")
    assert torch.equal(meta.state_dict()["adapter.rope.bands"], bands)
    v, a, t = make_inputs(cfg)
    with torch.no_grad():
        assert torch.equal(meta(v, a, t, [2])[0], full(v, a, t, [2])[0])


def test_no_timestep_input_exists():
    params = list(inspect.signature(MagiHumanDiT.forward).parameters)
    assert params == ["self", "video_latent", "audio_latent", "text_embeds", "text_lens", "coords", "frame_receptive_field"]
    names = [k for k in MagiHumanDiT(DiTConfig.preset("tiny"), device="meta").state_dict()]
    assert not any("time" in k for k in names)
    assert not any(part in ("t_embedder", "t_block", "adaln") for k in names for part in k.split("."))


def test_random_init_gives_finite_moderate_outputs():
    cfg = DiTConfig.preset("tiny")
    m = MagiHumanDiT(cfg)
    m2 = MagiHumanDiT(cfg)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m2.parameters()))  # deterministic
    assert m.block.layers[0].attention.pre_norm.weight.abs().max() == 0
    assert m.adapter.video_embedder.bias.abs().max() == 0
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 48, 2, 4, 4, generator=g)
    with torch.no_grad():
        ov, oa = m(v, torch.randn(1, 5, 64, generator=g), torch.randn(1, 4, 64, generator=g), [4])
    assert torch.isfinite(ov).all() and torch.isfinite(oa).all()
    assert 1e-3 < ov.std() < 10 and 1e-3 < oa.std() < 10


def test_compute_dtype_switch_and_validation():
    m = MagiHumanDiT(small_config(), device="meta", compute_dtype=torch.float32)
    assert m.compute_dtype == torch.float32
    m.set_compute_dtype(torch.bfloat16)
    assert m.compute_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        m.set_compute_dtype(torch.int8)


def test_bad_inputs_raise_clear_errors():
    cfg = small_config()
    m = make_model(cfg)
    v, a, t = make_inputs(cfg)
    with pytest.raises(ValueError, match="channels"):
        m(v[:, :3], a, t, [3])
    with pytest.raises(ValueError, match="W=5.*multiple of the patch"):
        m(v[..., :5], a, t, [3])
    with pytest.raises(ValueError, match="text_lens"):
        m(v, a, t, [0])
    with pytest.raises(ValueError, match="text_lens"):
        m(v, a, t, [6])
    with pytest.raises(ValueError, match="text_lens has 2 entries"):
        m(v, a, t, [2, 2])
    with pytest.raises(ValueError, match="coords"):
        m(v, a, t, [3], coords="v3")
    with pytest.raises(ValueError, match="audio_latent"):
        m(v, a[:, :, :4], t, [3])
    with pytest.raises(ValueError, match="frame_receptive_field"):
        m(v, a, t, [3], frame_receptive_field=-2)
