"""A lean PyInstaller hook for torch: replaces pyinstaller-hooks-contrib's hook-torch.py.

The contrib hook collects every torch submodule, every shared library (test libraries
included) and every data file (test binaries, protoc, C++ tests: ~130 MB). ZLoRA Desktop uses
eager torch only (tensors, linalg, safetensors I/O), so this hook leaves out what is never
imported by ``import torch`` and the engine: the compiler stack (``torch._inductor``,
``torch._dynamo``), ONNX export, the distributed training stack (all but the modules
``import torch`` itself loads), the test-suite helpers, and tooling. The self-test of the
frozen app (``ZLoRA-Desktop --self-test``) proves the rest is enough.

torch's ``.py`` sources are kept beside the byte-code (``module_collection_mode = "pyz+py"``):
torch reads its own sources at run time (``inspect.getsource`` for TorchScript and
decorators), and fails without them.

Hooks in ``hookspath`` take precedence over the contrib ones (PyInstaller >= 5.0).
"""

import os
import sys

from PyInstaller import compat
from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs, collect_submodules, logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import zlora_lean  # noqa: E402 - the shared lists of what the bundle leaves out

module_collection_mode = "pyz+py"
warn_on_missing_hiddenimports = False

hiddenimports = collect_submodules("torch", filter=zlora_lean.torch_module_wanted, on_error="ignore")

# Runtime data only: no headers, C++ sources, cmake files, test binaries, protoc, kernel templates.
datas = collect_data_files(
    "torch",
    excludes=[
        "**/*.h", "**/*.hpp", "**/*.cuh", "**/*.lib", "**/*.cpp", "**/*.pyi", "**/*.cmake",
        "**/*.typed", "bin/**", "test/**", "include/**", "share/**",
        "_inductor/**", "_dynamo/**", "utils/model_dump/**", "testing/_internal/**",
    ],
)

# Shared libraries, less the ones torch builds only for its own tests.
binaries = [
    (src, dest) for src, dest in collect_dynamic_libs("torch", search_patterns=["*.dll", "*.dylib", "lib*.so", "*.so.*"])
    if not any(t in src.replace("\\", "/").rsplit("/", 1)[-1] for t in zlora_lean.TORCH_TEST_LIBRARIES)
]



def _torch_requirements() -> list[str]:
    import packaging.requirements
    from _pyinstaller_hooks_contrib.compat import importlib_metadata

    dist = importlib_metadata.distribution("torch")
    reqs = [packaging.requirements.Requirement(r) for r in dist.requires or []]
    return [r.name for r in reqs if r.marker is None or r.marker.evaluate()]


# torch/__init__ checks that torch/bin/torch_shm_manager exists (Linux, macOS): keep that one.
try:
    from PyInstaller.utils.hooks import get_package_paths

    _shm = os.path.join(get_package_paths("torch")[1], "bin", "torch_shm_manager")
    if os.path.isfile(_shm):
        binaries.append((_shm, "torch/bin"))
except Exception:  # noqa: BLE001
    logger.warning("hook-torch (zlora): could not locate torch_shm_manager", exc_info=True)

if compat.is_win:
    # Some Windows builds depend on MKL, whose DLLs live in <env>/Library/bin (as the contrib hook).
    try:
        from _pyinstaller_hooks_contrib.compat import importlib_metadata

        if "mkl" in _torch_requirements():
            for _name in ("mkl", "intel-openmp", "tbb", "tbb12"):
                try:
                    _files = importlib_metadata.distribution(_name).files or []
                except importlib_metadata.PackageNotFoundError:
                    continue
                for _file in _files:
                    _path = _file.locate().resolve()
                    if _path.match("**/Library/bin/*.dll"):
                        binaries.append((str(_path), "."))
    except Exception:  # noqa: BLE001
        logger.warning("hook-torch (zlora): could not collect MKL DLLs", exc_info=True)

if compat.is_linux:
    # CUDA builds from PyPI use the nvidia-* wheels' libraries: infer them as the contrib hook does.
    try:
        from _pyinstaller_hooks_contrib.utils import nvidia_cuda as cudautils

        _nvidia = cudautils.infer_hiddenimports_from_requirements(_torch_requirements())
    except Exception:  # noqa: BLE001 - never fatal, as in the contrib hook
        logger.warning("hook-torch (zlora): could not infer NVIDIA CUDA hidden imports", exc_info=True)
        _nvidia = []
    if _nvidia:
        logger.info("hook-torch (zlora): CUDA libraries from %r", _nvidia)
    hiddenimports += _nvidia
    # Keep torch/lib/*.so where torch looks for them (no symlinks to the top level).
    bindepend_symlink_suppression = ["**/torch/lib/*.so*"]
