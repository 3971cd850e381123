"""The desktop app: a tray, a dashboard, settings and a chat window, all clients of the agent's API.

- ``launch.py``: ``run(args)``, what ``nectar`` / ``nectar run`` load (the ``nectar.gui`` entry point); checks
  for a display before Qt is imported.
- ``app.py``: ``NectarApp``, the composition root: the link, the tray (or the dashboard where there is none),
  the windows, and the actions they share (pause, resume, snooze, quit).
- ``agent_process.py``: ``AgentProcess``, starts the agent detached when none runs.
- ``link.py``: ``AgentLink``, every call to the agent off the Qt thread; the status poll.
- ``state_view.py``: the tray's six states, title and reason from a ``Status`` (pure).
- ``tray.py``: ``Tray``, the icon, tooltip and the menu rebuilt on ``aboutToShow``.
- ``icons.py``: the state icons from ``assets/icons``.
- ``dashboard.py``: ``Dashboard``; ``coverage_plot.py`` and ``contribution_plot.py`` draw its plots.
- ``settings_form.py``: ``SettingsForm``, generated from ``agent.settings``; ``settings_dialog.py`` adds the
  secrets and start at login (``autostart.py``).
- ``welcome.py``: ``Welcome``, the first run.
- ``chat/``: the chat window (see its ``__init__``).
- ``tools/``: ``render_icons.py`` and ``screenshots.py``, run by hand.

Never imports torch or the engine (``tests/test_gui_offline.py`` checks).
"""
