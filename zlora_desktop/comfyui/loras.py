"""Getting a LoRA to where ComfyUI's ``LoraLoaderModelOnly`` can load it.

ComfyUI only loads files listed under its ``models/loras`` folders, and caches a loaded LoRA by
its file name: a file rewritten under the same name renders the old weights. So every preview
file gets a new, content-derived name:

- same machine (or a shared folder): written atomically into ``zlora_preview/`` under the loras
  folder; the last ``keep`` files are kept, older ones deleted;
- remote server started with ``--enable-assets``: uploaded with ``POST /api/assets`` (ComfyUI
  stores it under its content hash);
- otherwise ``NoLoraRoute`` explains the two ways (a shared folder, ``extra_model_paths.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..core.errors import ZLoraError, one_line
from .client import ComfyClient, ComfyError

PREVIEW_SUBFOLDER = "zlora_preview"
DEFAULT_KEEP = 6  # preview files kept in zlora_preview/ (a full-size rank-96 merge is 0.5 GB)
MERGED_PREFIX = "zlora-"
INPUT_PREFIX = "input-"


class NoLoraRoute(ComfyError):
    """No way to put a LoRA where the server loads it."""


def common_loras_dirs() -> list[Path]:
    """Where ComfyUI installs usually keep their loras folder on this machine (existing ones)."""
    home = Path.home()
    roots = [home / "ComfyUI", home / "comfy" / "ComfyUI", home / "Documents" / "ComfyUI",
             home / "ComfyUI_windows_portable" / "ComfyUI", home / "src" / "ComfyUI", home / "git" / "ComfyUI"]
    if sys.platform == "win32":
        roots += [Path(drive + ":\\") / name for drive in "CD" for name in
                  ("ComfyUI", "ComfyUI_windows_portable\\ComfyUI")]
    elif sys.platform == "darwin":
        roots.append(Path("/Applications/ComfyUI"))
    else:
        roots += [Path("/opt/ComfyUI"), Path("/workspace/ComfyUI")]
    return [root / "models" / "loras" for root in roots if (root / "models" / "loras").is_dir()]


def recipe_key(recipe, digests: list[str]) -> str:
    """A name for the merge of ``recipe``: the same inputs (by content), ratios, weights and
    method give the same bytes (the writer is reproducible), so the same key."""
    from .. import __version__

    enabled = [item for item in recipe.inputs if item.enabled]
    record = {"zlora": __version__, "method": recipe.method, "format": recipe.format, "dtype": recipe.dtype,
              "rank": recipe.rank, "energy": recipe.energy if recipe.rank == "auto" else None,
              "inputs": [{"sha256": digest, "ratio": item.ratio, "weights": item.block_weights().to_text()}
                         for item, digest in zip(enabled, digests)]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


class LoraRoute:
    """Puts files where the server loads them; ``name`` is what its LoRA loader lists."""

    where = ""

    def place_merged(self, recipe, progress=None, cancel=None, known_digests=None) -> str:
        raise NotImplementedError

    def place_input(self, path: str, cancel=None) -> str:
        raise NotImplementedError


class LoraFolder(LoraRoute):
    """The server's loras folder, reachable on this machine (same machine or a shared folder)."""

    def __init__(self, folder: str | os.PathLike, keep: int = DEFAULT_KEEP):
        self.folder = Path(folder).expanduser().resolve()
        self.keep = max(1, int(keep))
        if not self.folder.is_dir():
            raise ZLoraError("the loras folder does not exist", self.folder)
        self.preview_dir = self.folder / PREVIEW_SUBFOLDER
        self.placed: list[Path] = []  # files this route placed or reused, newest last
        self.where = str(self.preview_dir)
        self.proven = False  # the server was seen listing a probe written here (check_visible)

    def comfy_name(self, path: Path) -> str:
        """The name ComfyUI lists for a file under the folder (forward slashes; ``resolve_name``
        matches the server's own separator)."""
        return Path(path).resolve().relative_to(self.folder).as_posix()

    def _prepare(self) -> None:
        try:
            self.preview_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise ZLoraError(f"cannot create {PREVIEW_SUBFOLDER}/ in the loras folder "
                             f"({exc.strerror or one_line(exc)})", self.folder) from None

    def place_merged(self, recipe, progress=None, cancel=None, known_digests=None) -> str:
        """Merge ``recipe`` into ``zlora_preview/zlora-<key>.safetensors`` (atomic, through the
        merge engine) unless that exact merge is there already; returns ComfyUI's name."""
        from copy import copy

        from ..core.merge import input_digest, merge

        self._prepare()
        records = {os.path.abspath(item.path): input_digest(item.path, known_digests, cancel)
                   for item in recipe.inputs if item.enabled}
        key = recipe_key(recipe, [records[os.path.abspath(i.path)][2] for i in recipe.inputs if i.enabled])
        target = self.preview_dir / f"{MERGED_PREFIX}{key[:20]}.safetensors"
        if target.is_file():
            os.utime(target)  # kept as the newest by the clean-up
        else:
            preview_recipe = copy(recipe)
            preview_recipe.output = str(target)
            merge(preview_recipe, progress=progress, cancel=cancel, known_digests=records,
                  durable=False)  # a scratch file, rewritten on demand: renamed whole, not fsynced
        self._placed(target)
        return self.comfy_name(target)

    def place_input(self, path: str, cancel=None) -> str:
        """An input LoRA as ComfyUI sees it: its own name when it lies in the loras folder,
        else an atomic copy named by its sha256 in ``zlora_preview/``."""
        source = Path(path).resolve()
        try:
            return self.comfy_name(source) if source.is_relative_to(self.folder) else self._copy(source, cancel)
        except OSError as exc:
            raise ZLoraError(f"cannot copy into the loras folder ({exc.strerror or one_line(exc)})", path) from None

    def _copy(self, source: Path, cancel) -> str:
        from ..core.merge import sha256_file
        from ..core.writer import temp_path_for

        self._prepare()
        digest = sha256_file(str(source), cancel=cancel)
        target = self.preview_dir / f"{INPUT_PREFIX}{digest[:20]}.safetensors"
        if target.is_file():
            os.utime(target)
        else:
            temp = temp_path_for(str(target))
            try:
                shutil.copyfile(source, temp)
                os.replace(temp, target)
            finally:
                if os.path.exists(temp):
                    os.remove(temp)
        self._placed(target)
        return self.comfy_name(target)

    def _placed(self, path: Path) -> None:
        if path in self.placed:
            self.placed.remove(path)
        self.placed.append(path)
        self.clean_up()

    def clean_up(self) -> list[Path]:
        """Delete all but the newest ``keep`` preview files, never one this route placed (a batch
        may need more than ``keep``). Returns what was deleted."""
        try:
            files = [p for p in self.preview_dir.iterdir() if p.suffix == ".safetensors"
                     and p.name.startswith((MERGED_PREFIX, INPUT_PREFIX))]
        except OSError:
            return []
        files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        protected = set(self.placed)
        deleted = []
        for old in files[self.keep:]:
            if old in protected:
                continue
            try:
                old.unlink()
                deleted.append(old)
            except OSError:  # in use (Windows) or gone: next time
                pass
        return deleted


class AssetUpload(LoraRoute):
    """A remote server started with ``--enable-assets``: files are uploaded, and the server names
    them by content hash."""

    def __init__(self, client: ComfyClient):
        self.client = client
        self.where = f"{client.url} (uploaded through /api/assets)"

    def place_merged(self, recipe, progress=None, cancel=None, known_digests=None) -> str:
        from copy import copy

        from ..core.merge import merge

        with tempfile.TemporaryDirectory(prefix="zlora-preview-") as folder:
            preview_recipe = copy(recipe)
            preview_recipe.output = os.path.join(folder, "zlora-preview.safetensors")
            merge(preview_recipe, progress=progress, cancel=cancel, known_digests=known_digests, durable=False)
            return self._upload(preview_recipe.output)

    def place_input(self, path: str, cancel=None) -> str:
        return self._upload(path)

    def _upload(self, path: str) -> str:
        answer = self.client.upload_lora(path, os.path.basename(path))
        listed = self.client.models("loras")
        for key in ("loader_path", "display_name", "name"):  # loader_path since the assets API has it
            value = answer.get(key)
            match = resolve_name(listed, value.removeprefix("loras/")) if isinstance(value, str) else None
            if match:
                return match
        # Content the server had already: it answers without a path; the file is named by its hash.
        digest = str(answer.get("asset_hash") or answer.get("hash") or "").split(":")[-1]
        for name in listed:
            if digest and os.path.splitext(name.replace("\\", "/").rsplit("/", 1)[-1])[0] == digest:
                return name
        raise ComfyError(f"ComfyUI at {self.client.url} took the upload of {os.path.basename(path)} "
                         f"but does not list it among its LoRAs")


def resolve_name(listed: list[str], wanted: str) -> str | None:
    """``wanted`` (forward slashes) as the server lists it (its own separator)."""
    normal = wanted.replace("\\", "/")
    for name in listed:
        if name.replace("\\", "/") == normal:
            return name
    return None


def choose_route(client: ComfyClient, loras_dir: str | os.PathLike | None = None,
                 keep: int = DEFAULT_KEEP) -> LoraRoute:
    """The named folder; else the server's own loras folder when it exists here (same machine);
    else an upload when the server takes one; else a folder found in the usual places, which
    ``check_visible`` then proves is the server's; else NoLoraRoute saying what to do."""
    if loras_dir:
        return LoraFolder(loras_dir, keep)
    for folder in client.folder_paths().get("loras", []):
        if Path(folder).is_dir() and os.access(folder, os.W_OK):
            return LoraFolder(folder, keep)
    if client.assets_enabled():
        return AssetUpload(client)
    found = common_loras_dirs()
    if found:
        return LoraFolder(found[0], keep)
    raise NoLoraRoute(no_route_message(client.url))


def no_route_message(url: str) -> str:
    return (f"cannot put a LoRA where ComfyUI at {url} loads it: its loras folder is not on this "
            f"machine and it takes no uploads. Either share the folder (name it with --loras-dir, "
            f"e.g. a network drive mapped to the server's models/loras), or add a folder both "
            f"machines see to the server's extra_model_paths.yaml under loras:, or start the server "
            f"with --enable-assets")


def check_visible(client: ComfyClient, route: LoraRoute, names: list[str]) -> list[str]:
    """The names as the server lists them; a name it does not list means the folder is not the
    server's (a wrong --loras-dir, or a remote server). A folder is first proven once by a probe
    file of a name nobody else has: preview names come from content, so the server's own folder
    may list the very name just written to a wrong one."""
    if isinstance(route, LoraFolder) and not route.proven:
        _prove_folder(client, route)
    listed = client.models("loras")
    resolved = []
    for name in names:
        match = resolve_name(listed, name)
        if match is None:
            raise _not_listed(client, route, name)
        resolved.append(match)
    return resolved


def _prove_folder(client: ComfyClient, route: LoraFolder) -> None:
    route._prepare()
    probe = route.preview_dir / f"zlora-probe-{os.urandom(8).hex()}.safetensors"
    try:
        probe.write_bytes(b"")  # listed by its extension; never loaded
    except OSError as exc:
        raise ZLoraError(f"cannot write to {PREVIEW_SUBFOLDER}/ ({exc.strerror or one_line(exc)})",
                         route.folder) from None
    try:
        if resolve_name(client.models("loras"), route.comfy_name(probe)) is None:
            raise _not_listed(client, route, route.comfy_name(probe))
    finally:
        probe.unlink(missing_ok=True)
    route.proven = True


def _not_listed(client: ComfyClient, route: LoraRoute, name: str) -> ComfyError:
    return ComfyError(f"ComfyUI at {client.url} does not list {name} although it was written to "
                      f"{route.where}: that folder is not one of the server's loras folders "
                      f"(check --loras-dir; a remote server needs a shared folder, "
                      f"extra_model_paths.yaml or --enable-assets)")

