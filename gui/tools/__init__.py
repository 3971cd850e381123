"""Scripts run by hand: ``render_icons.py`` (PNG sizes from the SVG sources), ``screenshots.py`` (the app under Xvfb)."""
