"""Render the tray and app icons from their SVG sources in ``assets/icons`` to the PNG sizes each OS needs.

Linux trays ask for 16-24 px (and 32-48 on high-DPI panels), Windows for 16, 24, 32, 48 and 256 (in an .ico),
macOS for 16-512 (in an .icns). Run it after editing an SVG and commit the outputs:

    python -m gui.tools.render_icons
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gui.icons import ICON_DIR, PNG_DIR, SIZES

APP_ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def render(svg: Path, size: int):
    """The SVG drawn on a transparent ``size`` x ``size`` image, antialiased."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    written = 0
    for svg in sorted(ICON_DIR.glob("*.svg")):
        for size in SIZES:
            target = PNG_DIR / f"{svg.stem}-{size}.png"
            if not render(svg, size).save(str(target)):
                raise OSError(f"cannot write {target}")
            written += 1
    app_svg = ICON_DIR / "nectar.svg"
    ico = render(app_svg, 256)  # Qt's ico writer stores one size; Windows scales it down well from 256
    for suffix, image in (("ico", ico), ("icns", render(app_svg, 512))):
        target = ICON_DIR / f"nectar.{suffix}"
        if not image.save(str(target), suffix):
            raise OSError(f"cannot write {target}")
        written += 1
    print(f"wrote {written} files to {ICON_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
