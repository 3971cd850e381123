"""Idle time on X11 from the MIT-SCREEN-SAVER extension (what xprintidle reads), through python-xlib."""

from __future__ import annotations

import contextlib
import logging
import os

from agent.activity.base import SourceUnavailable

logger = logging.getLogger(__name__)


class X11Idle:
    name = "x11"

    def __init__(self, display_name: str | None = None):
        display_name = display_name or os.environ.get("DISPLAY")
        if not display_name:
            raise SourceUnavailable("no X11 display (DISPLAY is not set)")
        try:
            from Xlib import display as xdisplay
            from Xlib.error import DisplayError

            self._display = xdisplay.Display(display_name)
        except ImportError:
            raise SourceUnavailable("python-xlib is not installed") from None
        except (DisplayError, OSError) as error:
            raise SourceUnavailable(f"cannot open X11 display {display_name}: {error}") from None
        if not self._display.has_extension("MIT-SCREEN-SAVER"):
            self._display.close()
            raise SourceUnavailable(f"X11 display {display_name} lacks the screensaver extension")
        self._root = self._display.screen().root
        self.display_name = display_name

    def seconds_since_input(self) -> float | None:
        try:
            return self._root.screensaver_query_info().idle / 1000.0
        except Exception as error:  # the X server went away: unknown from now on, never a crash
            logger.debug("X11 idle query failed: %s", error)
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._display.close()
