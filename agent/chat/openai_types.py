"""The OpenAI request bodies the agent accepts, validated, and the checks that refuse what it cannot do.

Fields OpenAI defines but Nectar does not support (``n`` > 1, tools, images, log probabilities, ...) are
declared so that a request using them gets a clear 400 naming the field, instead of being silently ignored;
fields nobody defined are ignored, as other local servers do, so newer clients keep working.
Nectar's own sampling knobs ride along as extra fields: ``repetition_penalty`` and ``top_k``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_UNSUPPORTED_PARTS = {"image_url": "images", "input_audio": "audio", "file": "files"}


class UnsupportedFeature(ValueError):
    """A valid OpenAI request Nectar cannot serve; ``param`` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self, index: int) -> str:
        """The message's text; images, audio and tool messages are refused with the field that carried them."""
        param = f"messages.{index}"
        if self.role in ("tool", "function") or self.tool_calls:
            raise UnsupportedFeature("tool and function messages are not supported (the model has no tools)", param)
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part_index, part in enumerate(self.content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                what = {"image_url": "images", "input_audio": "audio", "file": "files"}.get(
                    str(kind), f"{kind!r} parts"
                )
                raise UnsupportedFeature(
                    f"{what} are not supported: the model reads text only", f"{param}.content.{part_index}"
                )
            texts.append(part["text"])
        return "".join(texts)


class SamplingFields(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # Nectar's (transformers'); 1: none
    top_k: int | None = Field(None, ge=0)  # Nectar's; 0: no top-k filter
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1)
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise UnsupportedFeature("stop: at most 4 stop strings", "stop")
        return [stop for stop in stops if stop]

    def check_supported(self) -> None:
        if self.n is not None and self.n > 1:
            raise UnsupportedFeature("n: only one choice per request is supported (n=1)", "n")
        if self.logprobs:
            raise UnsupportedFeature("logprobs are not supported", "logprobs")
        if self.logit_bias:
            raise UnsupportedFeature("logit_bias is not supported", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise UnsupportedFeature("stream_options is only allowed with stream: true", "stream_options")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools or self.functions:
            param = "tools" if self.tools else "functions"
            raise UnsupportedFeature(f"{param}: tool calling is not supported", param)
        if self.tool_choice not in (None, "none", "auto") or self.function_call not in (None, "none", "auto"):
            raise UnsupportedFeature("tool_choice: tool calling is not supported", "tool_choice")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise UnsupportedFeature("response_format: only text answers are supported", "response_format")
        if self.top_logprobs:
            raise UnsupportedFeature("top_logprobs: log probabilities are not supported", "top_logprobs")
        if self.audio or (self.modalities and set(self.modalities) != {"text"}):
            raise UnsupportedFeature("modalities: only text is supported", "modalities")

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """``[{"role", "content"}]`` for the chat template (``developer`` is the newer name of ``system``)."""
        self.check_supported()
        turns = []
        for index, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            turns.append({"role": role, "content": message.text(index)})
        return turns


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] = Field(description="one prompt: text, or token ids")
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise UnsupportedFeature("echo is not supported", "echo")
        if self.suffix:
            raise UnsupportedFeature("suffix (insertion) is not supported", "suffix")
        if self.best_of is not None and self.best_of > 1:
            raise UnsupportedFeature("best_of: only one candidate per request is supported", "best_of")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            raise UnsupportedFeature("prompt: one prompt per request is supported", "prompt")

    def answer_limit(self) -> int | None:
        return self.max_tokens
