"""``ParametersPanel``: the system prompt and sampling settings of the conversation shown (each conversation
keeps its own). Ranges come from the chat API's ``Sampling`` model, so the panel cannot send a value the
agent would refuse.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPlainTextEdit, QSpinBox, QVBoxLayout, QWidget

from agent.chat.schema import Sampling

APPLY_DELAY_MS = 600  # edits are saved to the conversation once typing pauses


def _limits(name: str) -> tuple[float, float]:
    low, high = 0.0, 1e9
    for constraint in Sampling.model_fields[name].metadata:
        for attribute in ("ge", "gt"):
            if getattr(constraint, attribute, None) is not None:
                low = getattr(constraint, attribute)
        if getattr(constraint, "le", None) is not None:
            high = constraint.le
    return float(low), float(high)


class ParametersPanel(QWidget):
    changed = Signal()  # the owner edited something (after a short pause)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("e.g. You are a concise assistant.")
        self.system_prompt.setMaximumHeight(120)
        self.temperature = self._spin("temperature", 0.05, 2)
        self.top_p = self._spin("top_p", 0.05, 2)
        self.max_tokens = QSpinBox()
        low, high = _limits("max_tokens")
        self.max_tokens.setRange(int(max(low, 1)), int(high))
        self.repetition_penalty = self._spin("repetition_penalty", 0.05, 2)
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("random")
        form = QFormLayout()
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Repetition penalty", self.repetition_penalty)
        form.addRow("Seed", self.seed)
        hint = QLabel("Temperature 0 always picks the most likely token. Settings apply to this chat only.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #6B6B6B;")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>System prompt</b>"))
        layout.addWidget(self.system_prompt)
        layout.addWidget(QLabel("<b>Sampling</b>"))
        layout.addLayout(form)
        layout.addWidget(hint)
        layout.addStretch(1)
        self._delay = QTimer(self)
        self._delay.setSingleShot(True)
        self._delay.setInterval(APPLY_DELAY_MS)
        self._delay.timeout.connect(self.changed)
        self.system_prompt.textChanged.connect(self._delay.start)
        for spin in (self.temperature, self.top_p, self.max_tokens, self.repetition_penalty, self.seed):
            spin.valueChanged.connect(lambda _value: self._delay.start())
        self.show_values("", Sampling())

    def _spin(self, name: str, step: float, decimals: int) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        low, high = _limits(name)
        spin.setRange(low if name == "temperature" else max(low, 0.01), high)
        spin.setSingleStep(step)
        spin.setDecimals(decimals)
        return spin

    def show_values(self, system_prompt: str, sampling: Sampling) -> None:
        widgets = (
            self.system_prompt,
            self.temperature,
            self.top_p,
            self.max_tokens,
            self.repetition_penalty,
            self.seed,
        )
        for widget in widgets:
            widget.blockSignals(True)
        self.system_prompt.setPlainText(system_prompt)
        self.temperature.setValue(sampling.temperature)
        self.top_p.setValue(sampling.top_p)
        self.max_tokens.setValue(sampling.max_tokens)
        self.repetition_penalty.setValue(sampling.repetition_penalty)
        self.seed.setValue(-1 if sampling.seed is None else sampling.seed)
        self._stop = list(sampling.stop)  # not edited here; kept as the conversation has it
        for widget in widgets:
            widget.blockSignals(False)

    def values(self) -> tuple[str, Sampling]:
        seed = self.seed.value()
        sampling = Sampling(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            max_tokens=self.max_tokens.value(),
            repetition_penalty=self.repetition_penalty.value(),
            seed=None if seed < 0 else seed,
            stop=self._stop,
        )
        return self.system_prompt.toPlainText(), sampling
