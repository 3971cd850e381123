"""Pick the idle-time source that works on this machine, trying the likely ones first; never fails."""

from __future__ import annotations

import logging

from agent.activity.base import IdleSource, NullIdle, SourceUnavailable

logger = logging.getLogger(__name__)


def _open(name: str) -> IdleSource:
    if name == "x11":
        from agent.activity.x11 import X11Idle

        return X11Idle()
    if name == "gnome":
        from agent.activity.dbus_idle import GnomeIdle

        return GnomeIdle()
    if name == "logind":
        from agent.activity.dbus_idle import LogindIdle

        return LogindIdle()
    if name == "windows":
        from agent.activity.windows import WindowsIdle

        return WindowsIdle()
    if name == "macos":
        from agent.activity.macos import MacIdle

        return MacIdle()
    return NullIdle()


AUTO_ORDER = ("windows", "macos", "gnome", "x11", "logind")  # GNOME first: under XWayland, X11 sees no input


def choose_idle_source(setting: str = "auto") -> IdleSource:
    """The source named by ``activity.idle_source``, or with ``auto`` the first that opens; else ``NullIdle``."""
    names = AUTO_ORDER if setting == "auto" else (setting,)
    for name in names:
        if name == "none":
            break
        try:
            source = _open(name)
        except SourceUnavailable as error:
            logger.debug("idle source %s: %s", name, error)
            continue
        except Exception as error:  # a source that breaks in an unexpected way must not stop the agent
            logger.warning("idle source %s failed to open: %s", name, error)
            continue
        logger.info("idle time from %s", source.name)
        return source
    logger.info("no idle-time source works here; idle time is unknown")
    return NullIdle()
