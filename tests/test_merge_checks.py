"""Where the merge checks for NaN/Inf: once, on the stacked factors it makes (non-finite exactly
when an input is or a product overflows), then the inputs again only to name the one to blame."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

W2 = "layers.1.feed_forward.w2"


def _pair(tmp_path, dtype: str):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    write_sample(first, SampleSpec(rank=2, layers=2, dtype=dtype, seed=1))
    write_sample(second, SampleSpec(layout="kohya", rank=3, layers=2, dtype=dtype, seed=2))
    return first, second


def _poison(path, key: str, value: float) -> None:
    tensors = load_file(str(path))
    tensors[key][1, 0] = value
    save_file(tensors, str(path))


@pytest.mark.parametrize("method", ["exact", "svd"])
@pytest.mark.parametrize("dtype,value", [("bf16", float("nan")), ("fp16", float("inf")), ("fp32", float("-inf"))])
def test_a_non_finite_value_in_the_second_input_is_refused_naming_that_file(tmp_path, method, dtype, value):
    first, second = _pair(tmp_path, dtype)
    _poison(second, "lora_unet_layers_1_feed_forward_w2.lora_down.weight", value)
    output = tmp_path / "out.safetensors"
    recipe = Recipe([RecipeInput(str(first), 1.0), RecipeInput(str(second), 0.5)], str(output), method=method,
                    rank=2 if method == "svd" else None)
    with pytest.raises(ZLoraError) as caught:
        merge(recipe)
    assert str(caught.value) == f"{second}: module {W2} holds NaN or Inf values"
    assert sorted(os.listdir(tmp_path)) == ["first.safetensors", "second.safetensors"]


def test_a_nan_times_a_zero_scale_is_still_refused(tmp_path):
    """alpha 0 makes the factor 0: NaN·0 is NaN, so the stacked check still sees the NaN."""
    path = tmp_path / "zero_alpha.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2, dtype="fp32", alpha=0.0))
    _poison(path, f"diffusion_model.{W2}.lora_B.weight", float("nan"))
    with pytest.raises(ZLoraError, match=f"^{path}: module {W2} holds NaN or Inf values$"):
        merge(Recipe([RecipeInput(str(path), 1.0)], str(tmp_path / "out.safetensors")))


@pytest.mark.parametrize("method", ["exact", "svd"])
@pytest.mark.parametrize("fails", [False, True])
def test_a_merge_runs_its_small_steps_on_one_thread_and_gives_torch_its_threads_back(tmp_path, method, fails):
    first, second = _pair(tmp_path, "fp32")
    if fails:
        _poison(second, "lora_unet_layers_1_feed_forward_w2.lora_down.weight", float("nan"))
    before = torch.get_num_threads()
    seen = []
    recipe = Recipe([RecipeInput(str(first), 1.0), RecipeInput(str(second), 1.0)], str(tmp_path / "out.safetensors"),
                    method=method, rank=3 if method == "svd" else None)
    try:
        merge(recipe, progress=lambda done, total, name: seen.append(torch.get_num_threads()))
    except ZLoraError:
        assert fails
    assert seen and set(seen) == {1}  # between modules: one thread
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("chunk", [1000, 4096, 1 << 20])
def test_sha256_file_reads_through_its_reused_buffer_to_the_true_digest(tmp_path, chunk):
    import hashlib

    from zlora_desktop.core.merge import sha256_file

    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(3 * 4096 + 17))  # the last chunk is a short one
    assert sha256_file(str(path), chunk=chunk) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("threshold,large", [(0, True), (1 << 62, False)])
def test_only_a_large_qr_gets_every_torch_thread_back(tmp_path, monkeypatch, threshold, large):
    from zlora_desktop.core import merge as engine

    if torch.get_num_threads() < 2:
        pytest.skip("torch has one thread here")
    first, second = _pair(tmp_path, "fp32")
    threads = torch.get_num_threads()
    during = []
    real = engine.svd_truncate

    def observed(*args, **kwargs):
        during.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_THREADED_QR_WORK", threshold)
    monkeypatch.setattr(engine, "svd_truncate", observed)
    merge(Recipe([RecipeInput(str(first), 1.0), RecipeInput(str(second), 1.0)], str(tmp_path / "out.safetensors"),
                 method="svd", rank=3))
    assert during and set(during) == ({threads} if large else {1})
    assert torch.get_num_threads() == threads
