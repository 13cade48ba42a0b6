"""LoKr read by the engine vs. LoKr loaded by diffusers 0.42's own LoRA path (a tiny random
ZImageTransformer2DModel, nothing downloaded): the same ΔW on every module, the same alpha rule."""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.interop

torch = pytest.importorskip("torch")
from conftest import import_diffusers  # noqa: E402

diffusers = import_diffusers()

from diffusers import ZImagePipeline, ZImageTransformer2DModel  # noqa: E402

from conftest import TINY_ZIMAGE_CONFIG, relative_error  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402

TINY = TINY_ZIMAGE_CONFIG


@pytest.mark.parametrize("layout", ["lokr-aitoolkit"])
def test_lokr_reads_as_diffusers_applies_it(tmp_path, layout):
    torch.manual_seed(0)
    pristine = ZImageTransformer2DModel(**TINY).eval()
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=2, hidden=256, ffn=int(256 / 3 * 8), adaln_in=256,
                                  layers=3, dtype="fp32", seed=3, alpha=3.0))
    transformer = copy.deepcopy(pristine)
    pipeline = ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    pipeline.load_lora_weights(str(path))
    pipeline.fuse_lora()
    lora = LoraFile.open(path)
    assert len(lora.modules) == 3 * 8 and {i.scale for i in lora.modules.values()} == {1.5}  # alpha 3 / w2 rank 2
    before = dict(pristine.named_parameters())
    for name in lora.modules:
        owner = transformer.get_submodule(name)
        weight = getattr(owner, "base_layer", owner).weight
        applied = weight.detach().double() - before[name + ".weight"].detach().double()
        down, up, scale = lora.load(name)
        assert relative_error(scale * (up.double() @ down.double()), applied) < 1e-5, name
