"""The plain types between the API and a job: what to generate, what came out, and an error in OpenAI's shape.

No engine, no FastAPI: ``translate.py`` builds a ``GenerationRequest``, ``warm.py`` runs it into an ``Outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ChatError(Exception):
    """An answer in OpenAI's error shape: HTTP ``status``, ``kind`` (its "type"), ``param`` and ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, in the engine's terms, without importing it (see ``translate.py``)."""

    messages: list[dict[str, str]] | None  # a chat (through the model's template) ...
    prompt: str | list[int] | None  # ... or a raw prompt: text or token ids
    max_tokens: int | None  # None: the setting chat.default_max_tokens
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    stop: list[str]
    seed: int | None


@dataclass
class Outcome:
    """What a finished job reports: the answer, its token counts, and how the swarm made it."""

    text: str
    tokens: int
    prompt_tokens: int
    finish_reason: str  # "stop" or "length"
    route: list[str]
    time_to_first_token: float
    tokens_per_second: float
    cancelled: bool = False
    token_ids: list[int] | None = None  # the answer's ids, given back when the prompt came as ids

    def extras(self) -> dict[str, Any]:
        """Nectar's additions to an OpenAI answer (the ``nectar`` field)."""
        extras: dict[str, Any] = {
            "route": self.route,
            "time_to_first_token": round(self.time_to_first_token, 4),
            "tokens_per_second": round(self.tokens_per_second, 2),
        }
        if self.token_ids is not None:
            extras["token_ids"] = self.token_ids
        return extras
