"""RunOptions reads back the options a DiT runs with: the compute dtype by its name, a dtype that is not a compute
dtype refused by name."""

import pytest
import torch

from magihuman.device import COMPUTE_DTYPE_NAMES
from magihuman.models.dit import MagiHumanDiT
from magihuman.models.dit_config import DiTConfig
from magihuman.options import RunOptions, _dtype_name


@pytest.mark.parametrize("name", list(COMPUTE_DTYPE_NAMES))
def test_the_compute_dtype_is_read_back_by_name(name):
    model = MagiHumanDiT(DiTConfig.preset("tiny"), device="meta")
    applied = RunOptions(compute_dtype=name).apply(model, "cpu")
    assert applied.compute_dtype == name == RunOptions.of(model).compute_dtype


def test_a_dtype_that_is_not_a_compute_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match=r"compute dtype torch.float8_e4m3fn is not one of bf16, fp16, fp32"):
        _dtype_name(torch.float8_e4m3fn)
