"""What the merge tells in the app before and after it runs: the format note and the log's warning
when the format leaves bias deltas out, then per input what its modules were and at what rank."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from .helpers import add_and_wait, wait_merge


def test_the_log_warns_before_merging_and_says_what_each_input_was(qtbot, window, samples, tmp_path):
    biased = tmp_path / "biased.safetensors"
    g = torch.Generator().manual_seed(0)
    stem = "diffusion_model.layers.0.adaLN_modulation.0"
    save_file({f"{stem}.diff": torch.randn(256, 16, generator=g), f"{stem}.diff_b": torch.randn(256, generator=g)},
              str(biased))
    session, panel = window.session, window.output
    add_and_wait(qtbot, window, [samples.style, biased])
    assert panel.format_note.isVisibleTo(panel)
    assert "biased.safetensors has bias deltas that format aitoolkit cannot hold" in panel.format_note.text()
    session.set_output(output=str(tmp_path / "out.safetensors"))
    assert panel.start_merge() and wait_merge(qtbot, window) == "ok"
    lines = panel.log_view.toPlainText().splitlines()
    warning = next(i for i, line in enumerate(lines) if "warning: 1 module has bias deltas" in line)
    wrote = next(i for i, line in enumerate(lines) if "wrote " in line)
    assert warning < wrote  # told when the merge started, before the result
    assert any(line.endswith("biased.safetensors: full diff rank 16 (1 module)") for line in lines)
    assert any(f"{os.path.basename(samples.style)}: LoRA rank" in line for line in lines)
    session.set_output(format="comfyui")
    assert not panel.format_note.isVisibleTo(panel)
