"""Idle time over D-Bus, where X11 cannot tell (Wayland sessions, consoles), with jeepney.

- GNOME (X11 or Wayland): ``org.gnome.Mutter.IdleMonitor.GetIdletime`` on the session bus, in milliseconds.
  Users of other volunteer clients poll this when the X11 screensaver is blind under Wayland (BOINC #5226).
- logind (any systemd desktop): the session's ``IdleHint`` and ``IdleSinceHint`` on the system bus; coarser (the
  desktop sets the hint after its own idle delay), but it works on consoles and most Wayland compositors.
"""

from __future__ import annotations

import logging
import os
import time

from agent.activity.base import SourceUnavailable

logger = logging.getLogger(__name__)


def _connect(bus: str):
    try:
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        raise SourceUnavailable("jeepney is not installed") from None
    try:
        return open_dbus_connection(bus=bus)
    except Exception as error:  # no bus (headless, containers): the source is unavailable
        raise SourceUnavailable(f"no D-Bus {bus.lower()} bus: {error}") from None


class GnomeIdle:
    name = "gnome"

    def __init__(self) -> None:
        from jeepney import DBusAddress

        self._connection = _connect("SESSION")
        self._address = DBusAddress(
            "/org/gnome/Mutter/IdleMonitor/Core",
            bus_name="org.gnome.Mutter.IdleMonitor",
            interface="org.gnome.Mutter.IdleMonitor",
        )
        if self.seconds_since_input() is None:
            self.close()
            raise SourceUnavailable("GNOME's IdleMonitor does not answer")

    def seconds_since_input(self) -> float | None:
        from jeepney import new_method_call

        try:
            reply = self._connection.send_and_get_reply(new_method_call(self._address, "GetIdletime"), timeout=1)
            return float(reply.body[0]) / 1000.0
        except Exception as error:
            logger.debug("GNOME idle query failed: %s", error)
            return None

    def close(self) -> None:
        self._connection.close()


class LogindIdle:
    name = "logind"

    def __init__(self) -> None:
        from jeepney import DBusAddress, Properties, new_method_call

        session_id = os.environ.get("XDG_SESSION_ID")
        if not session_id:
            raise SourceUnavailable("no logind session (XDG_SESSION_ID is not set)")
        self._connection = _connect("SYSTEM")
        manager = DBusAddress(
            "/org/freedesktop/login1", bus_name="org.freedesktop.login1", interface="org.freedesktop.login1.Manager"
        )
        try:
            reply = self._connection.send_and_get_reply(new_method_call(manager, "GetSession", "s", (session_id,)))
        except Exception as error:
            self._connection.close()
            raise SourceUnavailable(f"logind does not know session {session_id}: {error}") from None
        session = DBusAddress(
            reply.body[0], bus_name="org.freedesktop.login1", interface="org.freedesktop.login1.Session"
        )
        self._properties = Properties(session)

    def _get(self, name: str):
        return self._connection.send_and_get_reply(self._properties.get(name), timeout=1).body[0][1]

    def seconds_since_input(self) -> float | None:
        try:
            if not self._get("IdleHint"):
                return 0.0
            since_us = int(self._get("IdleSinceHint"))  # CLOCK_REALTIME microseconds
        except Exception as error:
            logger.debug("logind idle query failed: %s", error)
            return None
        return max(0.0, time.time() - since_us / 1e6) if since_us else None

    def close(self) -> None:
        self._connection.close()
