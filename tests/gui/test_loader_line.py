"""The "Loaders:" line: what each loader applies of the selected LoRA, and of the merge's output."""

from __future__ import annotations

import html

from .helpers import add_and_wait, wait_merge


def _text(label) -> str:
    return html.unescape(label.text())


def test_the_selected_lora_shows_what_each_loader_applies(qtbot, window, samples):
    session = window.session
    style, character, peft = add_and_wait(qtbot, window, [samples.style, samples.character, samples.peft])
    line = window.lora_panel.loaders_line

    # kohya names, 24 layers × (v, w1, w2, w3): ComfyUI does not map the split attention (v here)
    session.set_current(character.id)
    assert line.isVisibleTo(window.lora_panel)
    assert "ComfyUI 72 of 96 ⚠" in _text(line) and "diffusers 0.42 all" in _text(line)
    tip = html.unescape(line.toolTip())
    assert "ComfyUI applies 72 of 96 modules" in tip and "skips 24:" in tip and "L00-L23 v" in tip
    assert "lora_unet_layers_0_attention_to_v" in tip

    # diffusers layout with the PEFT header's alpha (1.5 on rank 3): ComfyUI ignores it, ×2 strength
    session.set_current(peft.id)
    assert "ComfyUI all, 240 at ×2 ⚠" in _text(line)

    # AI-Toolkit keys: every loader maps them all
    session.set_current(style.id)
    assert "ComfyUI all ·" in _text(line) and "⚠" not in _text(line)

    session.remove([style.id, character.id, peft.id])
    assert not line.isVisibleTo(window.lora_panel)


def test_the_merge_output_shows_what_each_loader_applies(qtbot, window, samples, tmp_path):
    session = window.session
    (character,) = add_and_wait(qtbot, window, [samples.character])
    line = window.output.loaders_line
    assert not line.isVisibleTo(window.output)
    output = tmp_path / "merged-kohya.safetensors"
    session.set_output(output=str(output), format="kohya", method="exact")
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    assert line.isVisibleTo(window.output)
    assert "ComfyUI 72 of 96 ⚠" in _text(line)
    assert "ComfyUI applies 72 of 96 modules" in html.unescape(line.toolTip())
    assert "merged-kohya.safetensors: ComfyUI applies 72 of 96 modules" in window.output.log_view.toPlainText()

    # the same modules written for ComfyUI: all of them apply
    session.set_output(output=str(tmp_path / "merged-comfy.safetensors"), format="comfyui")
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    assert "ComfyUI all ·" in _text(line)
