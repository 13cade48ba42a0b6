"""The Preview panel against a real ComfyUI server (tests/preview's fixtures: the tiny models and
LoRAs, the server started once per session). Skipped with the reason without a ComfyUI, failed
with ZLORA_TEST_COMFYUI_REQUIRED=1 (tests/preview/fixtures.py decides)."""

from __future__ import annotations

import socket

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

# The server (``comfyui``, ``tiny``) is tests/conftest.py's, shared with tests/preview.
from preview.fixtures import tiny_lora

from .helpers import wait_loaded
from .preview_helpers import STALL_MS, LoopGaps, connect

@pytest.fixture
def lora(tmp_path, tiny):
    return tiny_lora(tmp_path / "style.safetensors", tiny, seed=21)


def test_a_wrong_address_is_said_in_the_panel(qtbot, window):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    panel = connect(qtbot, window, f"http://127.0.0.1:{port}")
    assert "connection refused" in panel.server_label.text()
    assert f"127.0.0.1:{port}" in panel.server_label.text()
    assert panel.connection is None and not panel.render_button.isEnabled()


def test_ctrl_7_raises_the_preview_page_and_ctrl_2_the_weights_at_their_full_size(qtbot, window, samples):
    from PySide6.QtTest import QTest

    window.session.add_paths([samples.style])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    window.resize(1280, 800)
    window.activateWindow()
    editor_height = window.editor_page.height()
    assert window.workspace.currentWidget() is window.editor_page and not window.preview.isVisible()
    QTest.keyClick(window, Qt.Key.Key_7, Qt.KeyboardModifier.ControlModifier)
    assert window.panel_of(QApplication.focusWidget()) is window.preview
    qtbot.waitUntil(window.preview.isVisible)
    # The preview takes the editor's place, not the impact view's: both stay in sight.
    assert window.preview_page.height() == editor_height
    assert not window.impact_dock.visibleRegion().isEmpty()
    QTest.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    grid = window.editor.all_blocks.grid
    qtbot.waitUntil(grid.isVisible)
    assert QApplication.focusWidget() is grid and window.editor_page.height() == editor_height
    # The editor keeps the room its grid and text line ask for.
    assert window.editor_page.height() >= window.editor.minimumSizeHint().height()


@pytest.mark.comfyui
def test_connect_shows_the_servers_models_and_remembers_the_address(qtbot, window, comfyui):
    panel = connect(qtbot, window, comfyui.url)
    assert panel.connection is not None, panel.server_label.text()
    assert panel.connection.version in panel.server_label.text()
    chosen = {role: combo.currentText() for role, combo in panel.model_combos.items()}
    assert chosen == {"unet": "z_image_turbo_bf16.safetensors", "clip": "qwen_3_4b.safetensors",
                      "vae": "ae.safetensors"}
    assert str(comfyui.loras_dir.resolve()) in panel.route_label.text()
    assert panel.render_button.isEnabled()
    assert window.settings.value("preview/url") == comfyui.url
    # Base sets its own steps and a negative prompt; Turbo takes them back.
    panel.model_preset.setCurrentIndex(panel.model_preset.findData("base"))
    assert panel.steps_spin.value() == 25 and panel.negative_edit.isEnabled() and panel.negative_edit.text()
    panel.model_preset.setCurrentIndex(panel.model_preset.findData("turbo"))
    assert panel.steps_spin.value() == 8 and not panel.negative_edit.isEnabled()


@pytest.mark.comfyui
def test_render_shows_the_three_images_and_the_gallery_without_stalling(qtbot, window, comfyui, lora, tmp_path):
    window.session.add_paths([lora])
    wait_loaded(qtbot, window, 1)
    panel = connect(qtbot, window, comfyui.url)
    panel.prompt_edit.setPlainText("a lighthouse")
    panel.size_combo.setEditText("80 × 48")
    panel.steps_spin.setValue(3)
    with LoopGaps() as gaps, qtbot.waitSignal(panel.renderFinished, timeout=60000):
        assert panel.render()
    assert sorted(panel.current) == ["base", "merged", "stacked"], panel.server_label.text()
    assert all((r.image.width(), r.image.height()) == (80, 48) for r in panel.current.values())
    assert panel.gallery.count() == 3 and len(panel.renders) == 3
    assert set(panel.result_labels) == {"stacked", "merged", "base"}
    assert "80×48" in panel.result_labels["merged"][0].text()
    assert panel.progress.value() == panel.progress.maximum()
    assert gaps.longest * 1000 < STALL_MS, f"the GUI thread stalled {gaps.longest * 1000:.0f} ms"

    # The LoRA changes the image, so "as set" against base is not black.
    panel.diff_combo.setCurrentIndex(panel.diff_combo.findData("base"))
    _, picture = panel.result_labels["difference"]
    image = picture.pixmap().toImage()
    assert any(image.pixelColor(x, y).value() > 0 for x in range(image.width()) for y in range(image.height()))

    # A thumbnail opens the image at full size; Save image… writes ComfyUI's PNG as it came.
    from zlora_desktop.gui.preview_panel import ImageDialog

    panel.gallery.itemClicked.emit(panel.gallery.item(1))
    (dialog,) = [d for d in panel.findChildren(ImageDialog) if d.isVisible()]
    assert dialog.render is panel.renders[1]
    target = tmp_path / "saved.png"
    dialog.save(str(target))
    assert target.read_bytes() == panel.renders[1].png
    dialog.close()

    # A second render adds to the gallery; the panel shows the new one.
    panel.mode_boxes["stacked"].setChecked(False)
    panel.mode_boxes["merged"].setChecked(False)
    with qtbot.waitSignal(panel.renderFinished, timeout=60000):
        assert panel.render()
    assert list(panel.current) == ["base"] and panel.gallery.count() == 4

    # Results replaced are hidden at once: out of the layout, they painted over the new ones
    # (overlapping captions) until their deferred deletion.
    from PySide6.QtWidgets import QApplication, QLabel

    panel._show_results()
    QApplication.processEvents()  # the new boxes' queued show; deferred deletions are not run by it
    captions = [label.text() for label in panel.findChildren(QLabel)
                if label.isVisibleTo(panel) and label.text().endswith("×48)")]
    assert captions == ["base (80×48)"]


@pytest.mark.comfyui
def test_cancel_interrupts_the_render(qtbot, window, comfyui):
    from zlora_desktop.comfyui.client import ComfyClient

    panel = connect(qtbot, window, comfyui.url)
    panel.mode_boxes["stacked"].setChecked(False)
    panel.mode_boxes["merged"].setChecked(False)
    panel.size_combo.setEditText("256 × 256")
    panel.steps_spin.setValue(400)
    assert panel.render()
    qtbot.waitUntil(lambda: "step" in panel.progress.format(), timeout=60000)
    with qtbot.waitSignal(panel.renderFinished, timeout=30000):
        panel.cancel_button.click()
    assert panel.progress.format() == "cancelled" and not panel.current
    assert panel.render_button.isEnabled() and not panel.cancel_button.isEnabled()
    with ComfyClient(comfyui.url) as client:
        running, pending = client.queue_ids()
    assert not running and not pending


def pixels(image):
    import numpy as np

    image = image.convertToFormat(image.Format.Format_RGB888)
    rows = np.frombuffer(bytes(image.constBits()), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : image.width() * 3].astype(np.int16)


@pytest.mark.comfyui
def test_render_takes_the_weights_being_typed(qtbot, window, comfyui, lora):
    from PySide6.QtTest import QTest

    window.session.add_paths([lora])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    panel = connect(qtbot, window, comfyui.url)
    panel.mode_boxes["stacked"].setChecked(False)
    panel.size_combo.setEditText("64 × 64")
    panel.steps_spin.setValue(2)
    line = window.editor.text
    line.setFocus()
    qtbot.waitUntil(line.hasFocus)
    line.selectAll()
    QTest.keyClicks(line, "default=0.5, L00-L01=0")  # not applied yet: no Enter
    with qtbot.waitSignal(panel.renderFinished, timeout=60000):
        assert panel.render()
    assert entry.weights.get("L01", "q") == 0
    # The tiny model has layers L00 and L01 only (and the refiners at 0.5): "as set" is no longer
    # "as loaded"'s image, which it matches within 2 levels at full weight (tests/preview).
    weighted = pixels(panel.current["merged"].image)
    panel.mode_boxes["stacked"].setChecked(True)
    with qtbot.waitSignal(panel.renderFinished, timeout=60000):
        assert panel.render()
    assert abs(pixels(panel.current["stacked"].image) - weighted).max() > 10


def test_text_that_does_not_parse_blocks_the_render(qtbot, window, samples):
    from PySide6.QtTest import QTest

    window.session.add_paths([samples.style])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    line = window.editor.text
    line.setFocus()
    qtbot.waitUntil(line.hasFocus)
    line.selectAll()
    QTest.keyClicks(line, "L99=banana")
    assert window.preview_recipe() is None
    assert "Not applied" in window.statusBar().currentMessage()


@pytest.mark.comfyui
def test_a_loras_folder_the_server_does_not_read_is_said_under_render(qtbot, window, comfyui, tiny, tmp_path):
    # A LoRA no other test merges: the server's own folder must not hold a preview of that name.
    window.session.add_paths([tiny_lora(tmp_path / "unique.safetensors", tiny, seed=31)])
    wait_loaded(qtbot, window, 1)
    elsewhere = tmp_path / "not-the-servers"
    elsewhere.mkdir()
    window.preview.loras_edit.setText(str(elsewhere))
    panel = connect(qtbot, window, comfyui.url)
    assert str(elsewhere) in panel.route_label.text()
    panel.mode_boxes["stacked"].setChecked(False)
    panel.size_combo.setEditText("64 × 64")
    with qtbot.waitSignal(panel.renderFinished, timeout=60000):
        assert panel.render()
    assert panel.error_label.isVisible() and "does not list" in panel.error_label.text(), \
        (panel.progress.format(), panel.error_label.text(), panel.server_label.text(), list(panel.current))
    assert str(elsewhere) in panel.error_label.text() and panel.progress.format() == "failed"
    assert panel.render_button.isEnabled() and panel.gallery.count() == 0


@pytest.mark.comfyui
def test_a_remembered_model_the_server_lacks_is_named(qtbot, window, comfyui):
    window.settings.set_value("preview/clip", "qwen_3_8b.safetensors")
    panel = connect(qtbot, window, comfyui.url)
    assert panel.model_combos["clip"].currentText() == "qwen_3_4b.safetensors"
    assert "Not on this server: qwen_3_8b.safetensors (text_encoders)" in panel.server_label.text()
