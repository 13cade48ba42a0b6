"""The output panel's "Equal q/k/v ranks" box: on by default, reaches the document and the merge."""

from __future__ import annotations

from safetensors import safe_open

from .helpers import add_and_wait, wait_merge


def _k_rank(path) -> int:
    with safe_open(str(path), "pt") as handle:
        return handle.get_slice("diffusion_model.layers.0.attention.to_k.lora_A.weight").get_shape()[0]


def test_the_equal_qkv_box_reaches_the_document_and_the_merge(qtbot, window, samples, tmp_path):
    from zlora_desktop.core.sample import SampleSpec, write_sample

    q_only = tmp_path / "q_only.safetensors"
    write_sample(q_only, SampleSpec(rank=3, layers=2, components=("q",), seed=5))
    session, box = window.session, window.output.equal_qkv
    add_and_wait(qtbot, window, [samples.style, q_only])
    assert box.isChecked() and session.output.equal_qkv_ranks
    session.set_output(output=str(tmp_path / "on.safetensors"))
    assert window.output.start_merge() and wait_merge(qtbot, window) == "ok"
    padded = _k_rank(tmp_path / "on.safetensors")

    box.click()
    assert session.output.equal_qkv_ranks is False and session.merge_recipe().equal_qkv_ranks is False
    session.set_output(output=str(tmp_path / "off.safetensors"))
    assert window.output.start_merge() and wait_merge(qtbot, window) == "ok"
    assert _k_rank(tmp_path / "off.safetensors") == padded - 3
    session.set_output(equal_qkv_ranks=True)
    assert box.isChecked()
