"""The tray's icons, one per state, from ``assets/icons`` (SVG sources and the PNG sizes rendered from them).

``gui/tools/render_icons.py`` renders the PNGs; here a ``QIcon`` gets every size, so each platform picks the one
its tray wants. Where the PNGs are missing (a checkout without them) the SVG is used directly.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

ICON_DIR = Path(__file__).resolve().parents[1] / "assets" / "icons"
PNG_DIR = ICON_DIR / "png"
SIZES = (16, 20, 22, 24, 32, 40, 48, 64, 128, 256)


@cache
def icon(name: str):
    """The ``QIcon`` named like its SVG (a tray state, or ``nectar`` for the app)."""
    from PySide6.QtGui import QIcon

    result = QIcon()
    for size in SIZES:
        png = PNG_DIR / f"{name}-{size}.png"
        if png.exists():
            result.addFile(str(png))
    if result.isNull():
        svg = ICON_DIR / f"{name}.svg"
        if svg.exists():
            result.addFile(str(svg))
        else:  # an install without assets/: a generic icon rather than no tray at all
            from PySide6.QtWidgets import QApplication, QStyle

            result = QApplication.style().standardIcon(QStyle.StandardPixmap.SP_ComputerIcon)
    return result
