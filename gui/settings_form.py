"""``SettingsForm``: the settings form generated from the one declaration (``agent.settings.iter_settings``).

One tab per group, one row per setting: a widget chosen by its kind (check box, spin box with its range and
unit, choice list, text), its help under it, and an error line under that, filled as the value is edited
(validated by the same pydantic model the agent uses) or when the agent refuses a change.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError
from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from agent.settings import SettingInfo, Settings, iter_settings, parse_windows

ERROR_STYLE = "color: #C62828;"
HELP_STYLE = "color: palette(placeholder-text);"
INT_LIMIT = 2**31 - 1
ACRONYMS = {"cpu": "CPU", "gpu": "GPU", "api": "API", "dht": "DHT"}
_UNIT_SUFFIXES = ("_gb", "_mb", "_seconds", "_minutes", "_percent", "_days")
_ZERO_MEANS = re.compile(r"\(0: ([^)]+)\)")  # "(0: automatic)" in a help text: the spin box shows "automatic"
_SERVER_PROBLEM = re.compile(r"([a-z_]+\.[a-z_]+) = (.*?): (.*?)(?=; [a-z_]+\.[a-z_]+ = |$)")


def label_of(info: SettingInfo) -> str:
    """``memory_budget_gb`` -> 'Memory budget' (the unit is shown next to the value)."""
    name = info.name
    for suffix in _UNIT_SUFFIXES:
        if info.unit and name.endswith(suffix):
            name = name.removesuffix(suffix)
    words = [ACRONYMS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def validate_value(info: SettingInfo, value: Any) -> str | None:
    """The declaration's verdict on one value: None, or the message the agent would give."""
    model: type[BaseModel] = Settings.model_fields[info.group].annotation
    try:
        model.model_validate({info.name: value})
    except ValidationError as error:
        for item in error.errors():
            if tuple(item["loc"])[:1] == (info.name,):
                return item["msg"].removeprefix("Value error, ")
    return None


def server_problems(message: str) -> dict[str, str]:
    """The agent's refusal ('...: compute.threads_active = -3: Input should be ...') as {key: message}."""
    return {key: f"{problem} (got {value})" for key, value, problem in _SERVER_PROBLEM.findall(message)}


class SettingRow(QWidget):
    """One setting: its editor, help and error line."""

    edited = Signal()

    def __init__(self, info: SettingInfo):
        super().__init__()
        self.info = info
        self.editor = self._make_editor()
        self.editor.setObjectName(info.key)
        self.editor.setToolTip(info.describe())
        self.help = QLabel(self._help_text())
        self.help.setWordWrap(True)
        self.help.setStyleSheet(HELP_STYLE)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setObjectName(info.key + ".error")
        self.error.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 6)
        layout.setSpacing(2)
        layout.addWidget(self.editor)
        layout.addWidget(self.help)
        layout.addWidget(self.error)

    def _help_text(self) -> str:
        info = self.info
        extra = []
        if info.minimum is not None or info.maximum is not None:
            low = "any" if info.minimum is None else f"{info.minimum:g}"
            high = "any" if info.maximum is None else f"{info.maximum:g}"
            extra.append(f"{low} to {high}{' ' + info.unit if info.unit else ''}")
        return info.help + (f" ({'; '.join(extra)})" if extra else "")

    def _make_editor(self) -> QWidget:
        info = self.info
        suffix = f" {info.unit}" if info.unit else ""
        if info.kind == "bool":
            editor = QCheckBox()
            editor.toggled.connect(self._changed)
        elif info.kind == "int":
            editor = QSpinBox()
            editor.setRange(
                int(info.minimum if info.minimum is not None else -INT_LIMIT),
                int(min(info.maximum or INT_LIMIT, INT_LIMIT)),
            )
            editor.setSuffix(suffix)
            editor.valueChanged.connect(self._changed)
            self._zero_text(editor)
        elif info.kind == "float":
            editor = QDoubleSpinBox()
            editor.setDecimals(2)
            editor.setRange(
                info.minimum if info.minimum is not None else -1e9, info.maximum if info.maximum is not None else 1e9
            )
            editor.setSuffix(suffix)
            editor.valueChanged.connect(self._changed)
            self._zero_text(editor)
        elif info.kind == "choice":
            editor = QComboBox()
            editor.addItems(list(info.choices))
            editor.currentTextChanged.connect(self._changed)
        else:
            editor = QLineEdit()
            if info.kind == "list":
                editor.setPlaceholderText("comma-separated")
            editor.textChanged.connect(self._changed)
        return editor

    def _zero_text(self, editor: QSpinBox | QDoubleSpinBox) -> None:
        """Where 0 means something ('automatic', 'no limit'), the box says so instead of '0.00 GiB'."""
        match = _ZERO_MEANS.search(self.info.help)
        if match and self.info.minimum == 0:
            editor.setSpecialValueText(match.group(1))

    def value(self) -> Any:
        editor, kind = self.editor, self.info.kind
        if kind == "bool":
            return editor.isChecked()
        if kind in ("int", "float"):
            return editor.value()
        if kind == "choice":
            return editor.currentText()
        text = editor.text()
        if kind == "list":
            text = text.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    return text  # the validator names it
            return [part.strip() for part in text.split(",") if part.strip()]
        return text

    def set_value(self, value: Any) -> None:
        editor, kind = self.editor, self.info.kind
        editor.blockSignals(True)
        if kind == "bool":
            editor.setChecked(bool(value))
        elif kind in ("int", "float"):
            editor.setValue(value)
        elif kind == "choice":
            editor.setCurrentText(str(value))
        elif kind == "list":
            editor.setText(", ".join(str(item) for item in value))
        else:
            editor.setText(str(value))
        editor.blockSignals(False)
        self.show_error(None)

    def show_error(self, message: str | None) -> None:
        self.error.setText(message or "")
        self.error.setVisible(bool(message))

    def check(self) -> bool:
        problem = validate_value(self.info, self.value())
        self.show_error(problem)
        return problem is None

    def _changed(self, *_args: object) -> None:
        self.check()
        self.edited.emit()


class SettingsForm(QTabWidget):
    """Every setting, grouped in tabs as the declaration groups them."""

    edited = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows: dict[str, SettingRow] = {}
        self.loaded: dict[str, Any] = {}
        forms: dict[str, QFormLayout] = {}
        for info in iter_settings():
            form = forms.get(info.group)
            if form is None:
                page = QWidget()
                form = forms[info.group] = QFormLayout(page)
                form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
                scroll = QScrollArea()
                scroll.setWidgetResizable(True)
                scroll.setWidget(page)
                self.addTab(scroll, info.group_title)
            row = self.rows[info.key] = SettingRow(info)
            row.edited.connect(self.edited)
            label = QLabel(label_of(info))
            label.setBuddy(row.editor)
            form.addRow(label, row)

    def set_values(self, values: dict[str, Any]) -> None:
        self.loaded = dict(values)
        for key, value in values.items():
            if key in self.rows:
                self.rows[key].set_value(value)

    def changes(self) -> dict[str, Any]:
        """The settings whose value differs from the one loaded."""
        return {key: row.value() for key, row in self.rows.items() if row.value() != self.loaded.get(key)}

    def check(self) -> list[str]:
        """Validate every changed field; the keys of those that fail (each shows its error)."""
        return [key for key in self.changes() if not self.rows[key].check()]

    def show_problems(self, problems: dict[str, str]) -> None:
        for key, message in problems.items():
            if key in self.rows:
                self.rows[key].show_error(message)

    def focus(self, key: str) -> None:
        """Show the tab of ``key`` and put the cursor in its field."""
        row = self.rows[key]
        for index in range(self.count()):
            if self.widget(index).isAncestorOf(row):
                self.setCurrentIndex(index)
        row.editor.setFocus()


def parse_windows_or_error(text: str) -> str | None:
    """None when ``text`` is a valid list of HH:MM-HH:MM windows, else why not (the agent's own parser)."""
    try:
        parse_windows(text)
    except ValueError as error:
        return str(error)
    return None
