"""``WarmModel``: the agent's client of its swarm for chat (embeddings and head here, blocks remote), loaded on
first use and kept warm; ``Job``: one request's generation on a worker thread, one inference session each.

Why a thread per request: ``generate`` is blocking (each step waits for the swarm); the API's event loop must
keep serving other requests and streams. A job hands its text pieces to the loop through an asyncio queue,
and stops between two tokens when ``cancel()`` is called (a client that went away): its session closes at
once and the servers free its caches.

Limits: at most ``chat.max_concurrent`` jobs run (beyond that ``ChatError`` 429, "busy"); a job waits at most
``chat.wait_seconds`` for the swarm (loading, blocks nobody serves yet: retried until then), then fails with
the reason, naming the missing blocks. The engine and torch are imported here only when the model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from agent.chat.generation_types import ChatError, GenerationRequest, Outcome
from agent.chat.translate import engine_settings, prompt_ids
from agent.settings import Settings

logger = logging.getLogger(__name__)

MISSING_BLOCKS_RETRY_SECONDS = 1.0


@dataclass
class _Loaded:
    key: tuple[str, tuple[str, ...], str]
    model: Any  # engine.client.model.DistributedCausalLM
    tokenizer: Any


class WarmModel:
    def __init__(
        self,
        settings: Callable[[], Settings],
        initial_peers: Callable[[], list[str]],
        owner_request: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        swarm_key: Callable[[], str | None] = lambda: None,
    ):
        """``owner_request`` wraps each job: the owner's own generation is never throttled (``AgentState``);
        ``swarm_key`` gives the private swarm's key file (None in an open swarm)."""
        self.settings, self.initial_peers, self.owner_request = settings, initial_peers, owner_request
        self.swarm_key = swarm_key
        self.state = "cold"  # cold, loading, ready, failed
        self.detail = ""
        self.active = 0
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._closed = False

    @property
    def model_name(self) -> str:
        return self.settings().swarm.model

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of ``chat.max_concurrent`` places, or ``ChatError`` 429 at once: a busy answer, never a queue."""
        limit = self.settings().chat.max_concurrent
        with self._count_lock:
            if self.active >= limit:
                raise ChatError(
                    429,
                    f"busy: {self.active} chat requests are being answered (setting chat.max_concurrent = {limit}); "
                    "try again when one finishes",
                    "server_busy",
                    code="busy",
                )
            self.active += 1
        try:
            yield
        finally:
            with self._count_lock:
                self.active -= 1

    def load(self) -> _Loaded:
        """The model of the configured swarm, loaded once (again when the swarm settings change)."""
        settings = self.settings()
        swarm = settings.swarm
        key = (swarm.model, tuple(self.initial_peers()), swarm.dht_prefix)
        with self._load_lock:
            if self._closed:
                raise ChatError(503, "the agent is stopping", "service_unavailable")
            if self._loaded is not None and self._loaded.key == key:
                return self._loaded
            if not key[1]:
                self.state, self.detail = (
                    "failed",
                    "the agent knows no peer of its swarm yet (setting swarm.initial_peers)",
                )
                raise ChatError(503, self.detail, "service_unavailable")
            previous, self._loaded = self._loaded, None
            if previous is not None:
                previous.model.close()
            self.state, self.detail = "loading", f"joining the swarm of {swarm.model}"
            try:
                loaded = self._connect(settings, key)
            except Exception as error:
                self.state, self.detail = "failed", str(error)
                raise
            self._loaded, self.state, self.detail = loaded, "ready", ""
            logger.info("chat model %s ready (swarm %s)", swarm.model, swarm.name)
            return loaded

    def _connect(self, settings: Settings, key: tuple[str, tuple[str, ...], str]) -> _Loaded:
        from engine.client.config import ClientSettings
        from engine.client.model import DistributedCausalLM
        from engine.errors import USER_ERRORS

        wait = settings.chat.wait_seconds
        # a step may take longer than the wait (a long prompt's prefill on a CPU server): the wait bounds the first
        # answer (openai_api.py), the step timeout only says when a server counts as failed
        client = ClientSettings(step_timeout=max(60.0, wait), dht_timeout=min(10.0, wait), swarm_key=self.swarm_key())
        try:
            model = DistributedCausalLM.connect(key[0], list(key[1]), key[2] or None, settings=client)
        except USER_ERRORS as error:
            raise ChatError(503, f"cannot load the chat model: {error}", "service_unavailable") from None
        try:
            tokenizer = model.source.tokenizer()
        except Exception:  # a checkpoint without a tokenizer still takes token ids
            logger.warning("the chat model %s has no tokenizer: only token-id prompts work", key[0])
            tokenizer = None
        return _Loaded(key, model, tokenizer)

    def missing_blocks(self, timeout: float = 10.0) -> list[int]:
        """Blocks no online server holds now (the model is loaded for it)."""
        from engine.client.routing import missing_blocks

        loaded = self.load()
        model = loaded.model
        view = model.swarm.run(model.swarm.router.view(0, model.num_blocks), timeout=timeout)
        return missing_blocks(view, 0, model.num_blocks)

    def close(self) -> None:
        with self._load_lock:
            self._closed = True
            if self._loaded is not None:
                self._loaded.model.close()
                self._loaded = None
            self.state = "cold"


@dataclass
class Job:
    """One generation on a worker thread; events ("text", str), ("done", Outcome), ("error", Exception) arrive
    on ``events`` in the event loop that created it."""

    warm: WarmModel
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Job:
        """Take a slot (``ChatError`` 429 when none is free) and start; the slot is held until the thread ends."""
        slot = self.warm.slot()
        slot.__enter__()
        thread = threading.Thread(target=self._run, args=(slot,), name="nectar-chat", daemon=True)
        thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _emit(self, kind: str, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def _run(self, slot: AbstractContextManager[None]) -> None:
        try:
            with self.warm.owner_request():
                self._emit("done", self._generate())
        except Exception as error:
            if not isinstance(error, ChatError):
                error = _as_chat_error(error)
            self._emit("error", error)
        finally:
            slot.__exit__(None, None, None)

    def _generate(self) -> Outcome:
        from engine.client.generation import generate
        from engine.client.routing import MissingBlocksError

        settings = self.warm.settings()
        deadline = time.monotonic() + settings.chat.wait_seconds
        loaded = self.warm.load()
        ids = prompt_ids(self.request, loaded.tokenizer)
        generation = engine_settings(self.request, loaded.model.config, len(ids), settings.chat.default_max_tokens)
        while True:
            try:
                result = generate(
                    loaded.model,
                    ids,
                    generation,
                    loaded.tokenizer,
                    on_text=lambda piece: self._emit("text", piece),
                    should_stop=self._cancel.is_set,
                )
                break
            except MissingBlocksError:  # nothing was generated yet: wait for servers (e.g. one still starting)
                if self._cancel.is_set() or time.monotonic() + MISSING_BLOCKS_RETRY_SECONDS > deadline:
                    raise
                time.sleep(MISSING_BLOCKS_RETRY_SECONDS)
        if result.stop_reason == "cancelled":
            logger.info("a chat answer stopped after %d tokens: its reader went away", len(result.tokens))
        finish = "length" if result.stop_reason == "length" else "stop"
        return Outcome(
            text=result.text,
            tokens=len(result.tokens),
            prompt_tokens=len(ids),
            finish_reason=finish,
            route=result.route,
            time_to_first_token=result.time_to_first_token,
            tokens_per_second=result.tokens_per_second,
            cancelled=result.stop_reason == "cancelled",
            token_ids=list(result.tokens) if isinstance(self.request.prompt, list) else None,
        )


def _as_chat_error(error: Exception) -> ChatError:
    """The engine's expected failures become 503s naming the cause; anything else is logged, then a 500."""
    from engine.errors import SWARM_ERRORS
    from engine.wire import BadRequest

    if isinstance(error, SWARM_ERRORS):
        return ChatError(503, f"the swarm cannot answer: {error}", "service_unavailable", code="swarm_unavailable")
    if isinstance(error, (BadRequest, ValueError)):
        return ChatError(400, str(error))
    if isinstance(error, (TimeoutError, ConnectionError)):
        return ChatError(503, f"the swarm did not answer: {error}", "service_unavailable", code="swarm_unavailable")
    logger.exception("chat generation failed")
    return ChatError(500, f"generation failed: {type(error).__name__}: {error}", "server_error")
