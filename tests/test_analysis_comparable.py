"""Overlaps of two LoRAs trained for models of different sizes: refused by name, never a torch error."""

from __future__ import annotations

import pytest

from zlora_desktop.core.analysis import block_cosines, incomparable_reason, module_inner_products
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.sample import SampleSpec, write_sample


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sizes")
    specs = {"wide": SampleSpec(layout="aitoolkit", rank=2, seed=1, dtype="fp32"),
             "wide_kohya": SampleSpec(layout="kohya", rank=3, seed=2, dtype="fp32", layers=12),
             "narrow": SampleSpec(layout="aitoolkit", rank=2, hidden=32, ffn=96, adaln_in=8, seed=5)}
    paths = {}
    for name, spec in specs.items():
        paths[name] = str(folder / f"{name}.safetensors")
        write_sample(paths[name], spec)
    return paths


def _open(*paths):
    return [LoraFile.open(p) for p in paths]


def test_different_model_sizes_are_refused_with_both_files_named(sized_files):
    wide, narrow = _open(sized_files["wide"], sized_files["narrow"])
    try:
        reason = incomparable_reason(wide, narrow)
        assert reason == "different model sizes (hidden 64 vs 32, ffn 160 vs 96, adaln_in 16 vs 8)"
        with pytest.raises(ZLoraError) as refused:
            module_inner_products(wide, narrow)
        message = str(refused.value)
        assert sized_files["wide"] in message and sized_files["narrow"] in message
        assert "not comparable" in message and "hidden 64 vs 32" in message
        assert "mat1" not in message
        with pytest.raises(ZLoraError, match="not comparable"):
            block_cosines(narrow, wide)  # either order
    finally:
        for lora in (wide, narrow):
            lora.close()


def test_files_of_one_model_size_stay_comparable(sized_files):
    wide, kohya = _open(sized_files["wide"], sized_files["wide_kohya"])
    try:
        assert incomparable_reason(wide, kohya) is None
        products = module_inner_products(wide, kohya)
        assert products and set(products) <= set(wide.modules) & set(kohya.modules)
        for cross, norm1, norm2 in products.values():
            assert abs(cross) <= (norm1 * norm2) ** 0.5 * (1 + 1e-5)  # Cauchy-Schwarz
    finally:
        wide.close()
        kohya.close()
