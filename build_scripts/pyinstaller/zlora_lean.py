"""What the ZLoRA Desktop bundle leaves out (shared by zlora_desktop.spec and hooks/hook-torch.py).

Every entry was measured: the frozen app's self-test passes without it. Measure again
(``python build_scripts/build_app.py --self-test``) before adding to these lists.
"""

# torch subpackages that ``import torch`` and the engine never load (eager tensors, linalg,
# safetensors I/O only): the compiler stack, ONNX export, distributed training, tooling.
TORCH_EXCLUDED_SUBPACKAGES = (
    "torch._inductor",
    "torch._dynamo",
    "torch._numpy",
    "torch._lazy",
    "torch.onnx",
    "torch.utils.benchmark",
    "torch.utils.tensorboard",
    "torch.utils.hipify",
    "torch.utils.bottleneck",
    "torch.utils.model_dump",
    "torch.utils.viz",
    "torch.utils.jit",
    "torch.utils._sympy",
    "torch.distributed._composable",
    "torch.distributed._local_tensor",
    "torch.distributed._shard",
    "torch.distributed._sharded_tensor",
    "torch.distributed._sharding_spec",
    "torch.distributed._symmetric_memory",
    "torch.distributed._tensor",
    "torch.distributed._tools",
    "torch.distributed.checkpoint",
    "torch.distributed.debug",
    "torch.distributed.elastic",
    "torch.distributed.flight_recorder",
    "torch.distributed.fsdp",
    "torch.distributed.launcher",
    "torch.distributed.nn",
    "torch.distributed.optim",
    "torch.distributed.pipelining",
    "torch.distributed.tensor",
    "torch.distributed.algorithms.ddp_comm_hooks",
    "torch.distributed.algorithms.model_averaging",
    "torch.distributed.algorithms._quantization",
    "torch.distributed.algorithms._comm_hooks",
    "torch.distributed.algorithms._checkpoint",
    "torch.distributed.algorithms._optimizer_overlap",
)

# torch.testing._internal is torch's own test suite, but ``import torch`` loads these.
TORCH_TESTING_INTERNAL_KEPT = frozenset({
    "torch.testing._internal",
    "torch.testing._internal.common_dtype",
    "torch.testing._internal.logging_tensor",
})

# torch shared libraries built only for torch's own tests.
TORCH_TEST_LIBRARIES = ("torchbind_test", "jitbackend_test", "backend_with_compiler", "aoti_custom_ops")

# Top-level packages the app never imports. Some are torch's optional dependencies that
# static analysis would follow from the excluded subpackages (sympy alone is ~80 MB with .py).
EXCLUDED_PACKAGES = (
    # torch's optional/compiler dependencies
    "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec", "triton", "functorch",
    "optree", "opt_einsum", "expecttest", "hypothesis", "onnx", "onnxruntime", "onnxscript",
    "tensorboard", "torchvision", "torchaudio", "caffe2", "yaml",
    # never used by the app
    "tkinter", "_tkinter", "turtledemo", "idlelib", "lib2to3", "pydoc_data",
    "IPython", "matplotlib", "pandas", "scipy", "Cython",  # not PIL: zlora preview's images
    "pytest", "_pytest", "pytestqt", "setuptools", "pkg_resources", "distutils", "pip", "wheel",
    "diffusers", "transformers", "peft", "huggingface_hub", "accelerate", "tokenizers",
    "importlinter", "grimp",
    # PyQt bindings (PySide6 is the one used)
    "PyQt5", "PyQt6", "PySide2",
)

# Qt modules the GUI does not use (Essentials ones and, where installed, Addons ones). QtDBus stays:
# on Linux, Show in folder asks the file manager over D-Bus to select the file.
PYSIDE6_EXCLUDED = tuple("PySide6." + m for m in (
    "QtQml", "QtQuick", "QtQuickWidgets", "QtQuickControls2", "QtQuickTest", "QtQuick3D",
    "QtDesigner", "QtHelp", "QtUiTools", "QtTest", "QtSql", "QtXml", "QtConcurrent",
    "QtOpenGL", "QtOpenGLWidgets", "QtNetwork", "QtNetworkAuth", "QtStateMachine",
    "QtWebEngineCore", "QtWebEngineWidgets", "QtWebEngineQuick", "QtWebChannel", "QtWebSockets",
    "QtWebView", "Qt3DCore", "Qt3DRender", "Qt3DInput", "Qt3DLogic", "Qt3DAnimation", "Qt3DExtras",
    "QtMultimedia", "QtMultimediaWidgets", "QtSpatialAudio", "QtCharts", "QtDataVisualization",
    "QtGraphs", "QtGraphsWidgets", "QtPdf", "QtPdfWidgets", "QtPositioning", "QtLocation",
    "QtBluetooth", "QtNfc", "QtSerialPort", "QtSerialBus", "QtSensors", "QtRemoteObjects",
    "QtScxml", "QtTextToSpeech", "QtHttpServer", "QtAxContainer", "QtCanvasPainter",
))

# Qt files the app does not need: the translations, and the platform plugins a desktop never
# uses (embedded/VNC/KMS back ends) with the libraries only they need. xcb and wayland (Linux
# desktops), offscreen and minimal (headless) stay.
QT_UNUSED = (
    # Qt's own translations (standard dialogs in 40 languages, 7 MB): the app is English-only.
    "PySide6/Qt/translations/", "PySide6/translations/",
    "libqeglfs", "libqlinuxfb", "libqminimalegl", "libqvnc", "libqvkkhrdisplay",
    "egldeviceintegrations/", "libQt6EglFSDeviceIntegration", "libQt6EglFsKmsSupport",
    "libQt6EglFsKmsGbmSupport",
)


def torch_module_wanted(name: str) -> bool:
    if any(name == p or name.startswith(p + ".") for p in TORCH_EXCLUDED_SUBPACKAGES):
        return False
    if name.startswith("torch.testing._internal."):
        return name in TORCH_TESTING_INTERNAL_KEPT
    return True


def analysis_excludes() -> list[str]:
    """Analysis(excludes=...): the unwanted top-level packages and subpackages."""
    return list(EXCLUDED_PACKAGES) + list(TORCH_EXCLUDED_SUBPACKAGES) + list(PYSIDE6_EXCLUDED)
