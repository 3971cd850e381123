"""Where the agent learns whether its owner is using the machine. One small module per source and OS;
each source answers "unknown" (None) instead of raising when it cannot tell.

- ``base.py``: ``IdleSource`` (seconds since the last keyboard or mouse input) and ``NullIdle``.
- ``x11.py``: the X11 screensaver extension (python-xlib).
- ``dbus_idle.py``: GNOME's Mutter IdleMonitor and logind's IdleHint over D-Bus (jeepney): Wayland, consoles.
- ``windows.py``: ``GetLastInputInfo`` (ctypes). ``macos.py``: IOKit's ``HIDIdleTime`` (via ``ioreg``).
- ``system.py``: other programs' CPU use, battery, exclusive programs (psutil).
- ``gpu.py``: other programs' GPU use (NVML, when pynvml is installed).
- ``choose.py``: ``choose_idle_source(setting)``, the first source that works here.
- ``monitor.py``: ``ActivityMonitor``, the loop that gathers ``Observations`` and asks the policy.

The Windows and macOS modules import on Linux but have not been run on those systems.
"""
