#!/usr/bin/env bash
# Build (or reuse) the separate Python environment that runs the ComfyUI server the `comfyui`
# tests talk to (docs/PREVIEW.md). It is not the project's venv: ComfyUI needs torch 2.14.1 with the
# registry's torchvision (the project's CPU torch cannot import torchvision), about 6.8 GB.
#
#   .ci/comfyui-venv.sh [COMFYUI_DIR]     prints the venv's python on the last line of stdout
#
# COMFYUI_DIR defaults to ../shared/comfyui/ComfyUI; the venv goes to $ZLORA_COMFYUI_VENV
# (default ~/.cache/zlora/comfyui-venv), kept between runs. A venv whose stamp matches this
# script's pins and ComfyUI's requirements.txt, and that imports what the server imports first, is
# reused as it is; anything else is rebuilt from scratch. The stamp is written last, so an
# interrupted build never leaves a venv that looks good.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
comfy="${1:-$here/../shared/comfyui/ComfyUI}"
venv="${ZLORA_COMFYUI_VENV:-$HOME/.cache/zlora/comfyui-venv}"
python="${ZLORA_COMFYUI_BASE_PYTHON:-python3}"
# torch first: kornia/spandrel pull a matching CUDA build otherwise (ComfyUI's own instructions).
torch_pins="torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0 torchsde"

requirements="$comfy/requirements.txt"
[ -f "$requirements" ] || { echo "comfyui-venv: no ComfyUI at $comfy (requirements.txt missing)" >&2; exit 2; }
stamp="$(printf '%s\n' "$torch_pins" "$("$python" -c 'import sys; print(sys.version)')" | cat - "$requirements" | sha256sum | cut -d' ' -f1)"

venv_ok() {
  [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.zlora-stamp" 2>/dev/null)" = "$stamp" ] &&
    "$venv/bin/python" -c 'import torch, torchvision, aiohttp, transformers, safetensors' >/dev/null 2>&1
}

if venv_ok; then
  echo "comfyui-venv: reusing $venv" >&2
  echo "$venv/bin/python"
  exit 0
fi

start=$(date +%s)
echo "comfyui-venv: building $venv (several GB, takes minutes)" >&2
mkdir -p "$(dirname "$venv")"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $torch_pins
grep -viE '^\s*torch(vision|audio|sde)?\s*([<>=!~].*)?$' "$requirements" > "$venv/requirements-no-torch.txt"
"$venv/bin/python" -m pip freeze | grep -iE '^torch(vision|audio)?==' > "$venv/constraints.txt"
"$venv/bin/python" -m pip install -q -r "$venv/requirements-no-torch.txt" -c "$venv/constraints.txt"
echo "$stamp" > "$venv/.zlora-stamp"
venv_ok || { echo "comfyui-venv: the built venv at $venv does not import torch/torchvision" >&2; exit 1; }
echo "comfyui-venv: built in $(( $(date +%s) - start )) s" >&2
echo "$venv/bin/python"
