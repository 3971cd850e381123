"""Scripts run by hand: ``render_icons.py`` (PNG sizes from SVG sources), ``screenshots.py`` (the app under Xvfb)."""
