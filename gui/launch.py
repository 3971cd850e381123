"""``nectar`` and ``nectar run``: the GUI's entry point (the ``nectar.gui`` entry point the agent's CLI loads).

Checks for a display before Qt is imported (Qt aborts the process without one), then runs the app. Headless
use never comes here: ``nectar run --no-gui`` is the agent's own entry point and never imports Qt.
"""

from __future__ import annotations

import os
import sys

NO_DISPLAY = (
    "nectar: no graphical display here ({why}), so there is no tray to show.\n"
    "Run the agent headless instead:  nectar run --no-gui\n"
    "and control it with: nectar status | pause | resume | snooze MINUTES | stop"
)


def display_problem() -> str | None:
    """Why no window can be shown, or None. Linux needs an X11 or Wayland display; Windows and macOS have one."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("WAYLAND_DISPLAY"):
        return None
    display = os.environ.get("DISPLAY")
    if not display:
        return "neither DISPLAY nor WAYLAND_DISPLAY is set"
    try:
        from Xlib import display as xdisplay
        from Xlib.error import DisplayError

        try:
            xdisplay.Display(display).close()
        except (DisplayError, OSError, ValueError) as error:
            return f"cannot open display {display}: {error}"
    except ImportError:  # without python-xlib, let Qt try
        pass
    return None


def run(args: object = None) -> int:
    """Start the agent if it is not running, and show the tray."""
    problem = display_problem()
    if problem is not None:
        print(NO_DISPLAY.format(why=problem), file=sys.stderr)
        return 2
    from gui.agent_process import flags_from_args
    from gui.app import run_app

    return run_app(flags_from_args(args))
