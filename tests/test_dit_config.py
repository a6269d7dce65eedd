import pytest

from magihuman.models.dit_config import SR_1080P_LOCAL_ATTN_LAYERS, DiTConfig


def test_official_sizes():
    c = DiTConfig.preset("base")
    assert (c.num_heads_q, c.num_heads_kv) == (40, 8)
    # q (40*128) + k (8*128) + v (8*128) + gate (40)
    assert c.qkv_out_features == 40 * 128 + 2 * 8 * 128 + 40
    assert c.swiglu_intermediate_size == 13652
    assert c.gelu_intermediate_size == 4 * 5120


def test_sr_1080p_local_layers_match_official_list():
    official = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18, 20, 21, 22, 24, 25, 26,
                28, 29, 30, 32, 33, 34, 35, 36, 37, 38, 39]
    assert list(SR_1080P_LOCAL_ATTN_LAYERS) == official
    assert DiTConfig.preset("sr_1080p").local_attn_layers == official


def test_from_dict_ignores_official_only_fields():
    d = {"num_layers": 4, "hidden_size": 256, "head_dim": 64, "num_query_groups": 2,
         "params_dtype": "torch.float32", "tread_config": {"selection_rate": 0.5},
         "num_heads_q": 0, "activation_type": "swiglu7", "mm_layers": [0], "gelu7_layers": [],
         "local_attn_layers": [], "checkpoint_qk_layernorm_rope": False}
    c = DiTConfig.from_dict(d)
    assert c.num_layers == 4 and c.num_heads_q == 4 and c.mm_layers == [0]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        DiTConfig(num_layers=2, mm_layers=[5])
    with pytest.raises(ValueError, match="preset"):
        DiTConfig.preset("huge")
