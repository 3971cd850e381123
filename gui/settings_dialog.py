"""``SettingsDialog``: the generated settings form, the secrets (kept by the agent, never shown), and start at
login. Saving sends only the changed settings to the agent, which validates, writes and applies them at once;
a refused value is shown next to its field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from agent.api.models import SecretsAnswer, SettingsAnswer
from gui import autostart
from gui.settings_form import ERROR_STYLE, SettingsForm, server_problems

if TYPE_CHECKING:
    from gui.app import NectarApp


class SettingsDialog(QDialog):
    def __init__(self, app: NectarApp):
        super().__init__()
        self.app = app
        self.setWindowTitle("Nectar settings")
        self.resize(940, 660)
        self.form = SettingsForm()
        self.form.edited.connect(self._edited)
        self.form.addTab(self._secrets_page(), "Secrets")
        self.form.addTab(self._desktop_page(), "Desktop")
        self.file_label = QLabel("")
        self.file_label.setWordWrap(True)
        self.result = QLabel("loading the settings...")
        self.result.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save
            | QDialogButtonBox.StandardButton.Close
            | QDialogButtonBox.StandardButton.Reset
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Reset).setText("Undo changes")
        self.buttons.button(QDialogButtonBox.StandardButton.Save).clicked.connect(self.save)
        self.buttons.button(QDialogButtonBox.StandardButton.Reset).clicked.connect(self.load)
        self.buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form, 1)
        layout.addWidget(self.file_label)
        layout.addWidget(self.result)
        layout.addWidget(self.buttons)
        self.load()

    # settings
    def load(self) -> None:
        self.app.link.call(lambda client: client.get_settings(), self._loaded, self._failed)
        self.app.link.call(lambda client: client.secrets(), self._show_secrets, self._failed)

    def _loaded(self, answer: SettingsAnswer) -> None:
        self.form.set_values(answer.values)
        self.file_label.setText(f"Saved in {answer.file}; changes apply at once.")
        self.result.setText("\n".join(f"warning: {warning}" for warning in answer.warnings))
        self._edited()

    def save(self) -> None:
        bad = self.form.check()
        if bad:
            self.form.focus(bad[0])
            self._say(f"Fix the marked value{'s' if len(bad) > 1 else ''} first: {', '.join(bad)}", error=True)
            return
        changes = self.form.changes()
        if not changes:
            self._say("Nothing changed.")
            return
        self._say("Saving...")

        def saved(answer: SettingsAnswer) -> None:
            self._loaded(answer)
            self._say(f"Saved and applied: {', '.join(sorted(changes))}.")

        def refused(message: str) -> None:
            problems = server_problems(message)
            self.form.show_problems(problems)
            if problems:
                self.form.focus(next(iter(problems)))
            self._say(f"The agent refused the change: {message}", error=True)

        self.app.link.call(lambda client: client.set_settings(changes), saved, refused)

    def _edited(self) -> None:
        count = len(self.form.changes())
        self.buttons.button(QDialogButtonBox.StandardButton.Save).setEnabled(count > 0)
        if count:
            self._say(f"{count} unsaved change{'s' if count > 1 else ''}.")

    def _failed(self, message: str) -> None:
        self._say(message, error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.result.setText(text)
        self.result.setStyleSheet(ERROR_STYLE if error else "")

    # secrets
    def _secrets_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        intro = QLabel(
            "Secrets are kept by the agent in the system keyring, or in a file only you can read where there is "
            "none. They are never shown again, never written to the settings file or the logs."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.secret_rows: dict[str, tuple[QLabel, QLineEdit]] = {}
        for name, title in (("hf_token", "Hugging Face access token"), ("swarm_key", "Private swarm key")):
            box = QGroupBox(title)
            grid = QGridLayout(box)
            where = QLabel("...")
            where.setWordWrap(True)
            entry = QLineEdit()
            entry.setEchoMode(QLineEdit.EchoMode.Password)
            entry.setPlaceholderText("paste a new value to replace it")
            entry.setObjectName(f"secret.{name}")
            store = QPushButton("Store")
            store.clicked.connect(lambda _c=False, n=name: self._store_secret(n))
            forget = QPushButton("Delete")
            forget.clicked.connect(lambda _c=False, n=name: self._change_secret(n, None))
            grid.addWidget(where, 0, 0, 1, 3)
            grid.addWidget(entry, 1, 0)
            grid.addWidget(store, 1, 1)
            grid.addWidget(forget, 1, 2)
            layout.addWidget(box)
            self.secret_rows[name] = (where, entry)
        layout.addStretch(1)
        return page

    def _show_secrets(self, answer: SecretsAnswer) -> None:
        for info in answer.secrets:
            if info.name in self.secret_rows:
                state = "set" if info.present else "not set"
                store = "the system keyring" if info.backend == "keyring" else "a private file"
                self.secret_rows[info.name][0].setText(f"{state}; kept in {store} ({info.detail})")

    def _store_secret(self, name: str) -> None:
        entry = self.secret_rows[name][1]
        value = entry.text().strip()
        if not value:
            self._say("Paste the secret in its field first.", error=True)
            return
        entry.clear()
        self._change_secret(name, value)

    def _change_secret(self, name: str, value: str | None) -> None:
        def done(answer: SecretsAnswer) -> None:
            self._show_secrets(answer)
            self._say(f"{name} {'stored' if value is not None else 'deleted'}.")

        self.app.link.call(lambda client: client.set_secret(name, value), done, self._failed)

    # desktop
    def _desktop_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.autostart = QCheckBox("Start Nectar when I log in")
        self.autostart.setChecked(autostart.enabled())
        self.autostart.toggled.connect(self._set_autostart)
        layout.addWidget(self.autostart)
        note = QLabel("Closing the windows keeps Nectar lending in the tray; Quit in the tray menu stops it.")
        note.setWordWrap(True)
        layout.addWidget(note)
        row = QHBoxLayout()
        welcome = QPushButton("Show the welcome again")
        welcome.clicked.connect(self.app.show_welcome)
        row.addWidget(welcome)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(1)
        return page

    def _set_autostart(self, on: bool) -> None:
        try:
            autostart.set_enabled(on)
        except OSError as error:
            self._say(f"Cannot change start at login: {error}", error=True)
            return
        self._say("Nectar starts when you log in." if on else "Nectar no longer starts at login.")
