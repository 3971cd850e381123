"""Start at login for the GUI's welcome and settings: ``enabled()`` / ``set_enabled(on)``.

The entry itself is ``agent/autostart.py``'s (the XDG autostart file, the Windows Run key or the LaunchAgent, each
starting this installation's ``nectar run``, the bundle's executable once installed): one implementation for the
GUI, the ``desktop.start_at_login`` setting and ``nectar config set``.
"""

from __future__ import annotations

from agent import autostart


def enabled() -> bool:
    return autostart.is_enabled()


def set_enabled(on: bool) -> None:
    """Add or remove the login entry; an OSError says why it could not be written."""
    autostart.apply(on)
