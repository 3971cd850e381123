"""``Tray``: the system-tray icon, its tooltip, and a menu rebuilt from the current state each time it opens.

The icon and tooltip follow every status the link receives; the menu is built on ``aboutToShow`` (as Vorta's
does), so it never shows a stale Pause where Resume is meant. Its actions only ask the app to act: every call
to the agent goes through ``AgentLink``, off the Qt thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from gui.icons import icon
from gui.state_view import View, span_text

if TYPE_CHECKING:
    from gui.app import NectarApp

SNOOZE_CHOICES = ((30, "30 minutes"), (60, "1 hour"), (240, "4 hours"))


class Tray(QObject):
    def __init__(self, app: NectarApp):
        super().__init__(app)
        self.app = app
        self.icon = QSystemTrayIcon(icon("starting"), self)
        self.menu = QMenu()
        self.menu.aboutToShow.connect(self.rebuild)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        app.view_changed.connect(self.show_view)
        self.show_view(app.view)
        self.rebuild()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    @Slot(object)
    def show_view(self, view: View) -> None:
        self.icon.setIcon(icon(view.state))
        self.icon.setToolTip(view.tooltip)

    @Slot()
    def rebuild(self) -> None:
        """The menu for the state now: a header saying what the agent does and why, then the actions."""
        self.menu.clear()
        view, status = self.app.view, self.app.link.status
        header = self.menu.addAction(icon(view.state), f"{view.title}: {view.reason}")
        header.setEnabled(False)
        if status is not None and self.app.link.error is None:
            self.menu.addAction(span_text(status)).setEnabled(False)
        self.menu.addSeparator()
        self._add(self.menu, "Dashboard", self.app.show_dashboard)
        self._add(self.menu, "Chat", self.app.show_chat)
        self.menu.addSeparator()
        reachable = status is not None and self.app.link.error is None
        snooze = self.menu.addMenu("Snooze")
        snooze.setEnabled(reachable)
        for minutes, label in SNOOZE_CHOICES:
            self._add(snooze, label, lambda minutes=minutes: self.app.snooze(minutes))
        held = status is not None and (status.manual_pause or view.state == "snoozed")
        if held:
            self._add(self.menu, "Resume", self.app.resume).setEnabled(reachable)
        else:
            self._add(self.menu, "Pause", self.app.pause).setEnabled(reachable)
        self.menu.addSeparator()
        self._add(self.menu, "Settings...", self.app.show_settings)
        self._add(self.menu, "Quit Nectar", self.app.quit)

    def action(self, text: str) -> QAction | None:
        """The menu's action whose text starts with ``text`` (tests and the screenshot script use it)."""
        for item in self.menu.actions():
            if item.text().startswith(text):
                return item
            if item.menu() is not None and item.text().startswith(text.split("/")[0]) and "/" in text:
                for sub in item.menu().actions():
                    if sub.text().startswith(text.split("/", 1)[1]):
                        return sub
        return None

    def _add(self, menu: QMenu, text: str, slot) -> QAction:
        action = menu.addAction(text)
        action.triggered.connect(lambda _checked=False: slot())
        return action

    @Slot(QSystemTrayIcon.ActivationReason)
    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.app.show_dashboard()
