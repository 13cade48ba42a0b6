"""One dtype vocabulary: the output choices, the safetensors codes and torch agree."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from zlora_desktop.core import dtypes, options
from zlora_desktop.core.writer import write_safetensors


def test_the_output_choices_are_the_options_the_app_and_cli_offer():
    assert set(dtypes.CHOICES) == set(options.DTYPES) - {"auto"}
    for choice, name in dtypes.CHOICES.items():
        assert dtypes.torch_dtype(choice) is getattr(torch, name)


@pytest.mark.parametrize("code", sorted(dtypes.TORCH_NAMES))
def test_every_code_the_writer_knows_reads_back_as_the_same_torch_dtype(tmp_path, code):
    dtype = dtypes.torch_dtype(code)
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3).to(dtype)
    path = tmp_path / "t.safetensors"
    write_safetensors({"t": tensor}, {}, str(path))
    back = load_file(path)["t"]
    assert back.dtype is dtype and dtypes.safetensors_code(back.dtype) == code
    assert torch.equal(back.to(torch.float32), tensor.to(torch.float32))
    assert dtypes.byte_size(code, [2, 3]) == tensor.numel() * tensor.element_size()


def test_sizes_follow_the_format_including_sub_byte_types():
    assert dtypes.byte_size("F4", [2, 4]) == 4
    assert dtypes.byte_size("F6_E2M3", [4]) == 3
    assert dtypes.byte_size("F6_E2M3", [1]) is None  # 6 bits are no whole byte
    assert dtypes.byte_size("F32", []) == 4  # a scalar is one element
    assert dtypes.byte_size("BF16", [0, 7]) == 0
