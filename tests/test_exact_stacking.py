"""How the exact method stacks its inputs: bf16/fp32 outputs take each input's A unrounded (read
from its file straight into the output) and its whole factor c on B; fp16 splits √|c| over both;
a file that shrinks under a running merge is told, never read as zeros."""

from __future__ import annotations

import math
import os

import pytest
import torch
from safetensors.torch import load_file

from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

W2 = "layers.1.feed_forward.w2"
RATIOS = (0.7, -1.3)


def _inputs(tmp_path, dtype: str):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    write_sample(first, SampleSpec(rank=2, layers=2, dtype=dtype, seed=1))  # alpha absent: scale 1
    write_sample(second, SampleSpec(layout="kohya", rank=3, layers=2, dtype=dtype, seed=2))  # alpha = rank/2
    return first, second


def _merged(tmp_path, dtype: str):
    first, second = _inputs(tmp_path, dtype)
    output = tmp_path / "out.safetensors"
    merge(Recipe([RecipeInput(str(first), RATIOS[0]), RecipeInput(str(second), RATIOS[1])], str(output)))
    out = load_file(str(output))
    return [LoraFile.open(first), LoraFile.open(second)], out


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_float32_range_outputs_keep_each_a_unrounded_and_put_the_whole_factor_on_b(tmp_path, dtype):
    loras, out = _merged(tmp_path, dtype)
    down, up = out[f"diffusion_model.{W2}.lora_A.weight"], out[f"diffusion_model.{W2}.lora_B.weight"]
    offset = 0
    for lora, ratio in zip(loras, RATIOS):
        stored_down, stored_up, scale = lora.load_stored(W2)
        rank = stored_down.shape[0]
        assert torch.equal(down[offset:offset + rank], stored_down)  # the input's bits, not rescaled
        expected_up = (stored_up.float() * (ratio * scale)).to(stored_up.dtype)
        assert torch.equal(up[:, offset:offset + rank], expected_up)
        offset += rank
        lora.close()
    assert offset == down.shape[0]


def test_fp16_outputs_split_the_root_of_the_factor_over_both(tmp_path):
    loras, out = _merged(tmp_path, "fp16")
    down, up = out[f"diffusion_model.{W2}.lora_A.weight"], out[f"diffusion_model.{W2}.lora_B.weight"]
    offset = 0
    for lora, ratio in zip(loras, RATIOS):
        stored_down, stored_up, scale = lora.load_stored(W2)
        rank, c = stored_down.shape[0], ratio * scale
        root = math.sqrt(abs(c))
        assert torch.equal(down[offset:offset + rank], (stored_down.float() * root).half())
        assert torch.equal(up[:, offset:offset + rank], (stored_up.float() * math.copysign(root, c)).half())
        offset += rank
        lora.close()


def test_an_input_that_shrinks_during_the_merge_is_named_and_nothing_is_written(tmp_path):
    first, second = _inputs(tmp_path, "bf16")
    output = tmp_path / "out.safetensors"
    recipe = Recipe([RecipeInput(str(first), 1.0), RecipeInput(str(second), 1.0)], str(output))
    size = os.path.getsize(first)

    def cut_short(index, total, name):
        if index == 1:  # after the headers were read and the first module merged
            os.truncate(first, size // 2)

    with pytest.raises(ZLoraError) as caught:
        merge(recipe, progress=cut_short)
    assert str(caught.value).startswith(f"{first}: ")
    assert "shorter" in str(caught.value) or "cannot read tensor" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["first.safetensors", "second.safetensors"]
