"""Runs requests on a server's span: validates them, keeps sessions' caches, computes on the compute thread."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from engine.models.span import BlockSpan, SpanCache
from engine.server import faults
from engine.server.activations import ActivationStore, KeptForward, SavedBytes
from engine.server.adapters import AdapterSet
from engine.server.memory import CacheBudget
from engine.wire import BadRequest


@dataclass
class Session:
    """One client's inference session on (part of) this server's span."""

    session_id: int
    start: int
    end: int
    cache: SpanCache
    nbytes: int
    adapter: str | None = None
    prompts: torch.Tensor | None = None  # deep prompts (blocks, batch, prefix, hidden) added at every step


class SpanBackend:
    """The block span plus the limits every request is checked against before it reaches torch."""

    def __init__(
        self,
        span: BlockSpan,
        budget: CacheBudget,
        max_session_length: int,
        max_request_tokens: int,
        adapters: AdapterSet | None = None,
        activations: ActivationStore | None = None,
    ):
        self.span = span
        self.budget = budget
        self.max_session_length = max_session_length
        self.max_request_tokens = max_request_tokens
        self.adapters = adapters if adapters is not None else AdapterSet(span)
        self.activations = activations if activations is not None else ActivationStore(0)
        self.hidden_size = span.config.hidden_size
        self.kv_shape = span.family.kv_shape(span.config)
        self._ids = itertools.count()

    @property
    def free_cache_tokens(self) -> int:
        per_token = SpanCache.bytes_per_token(self.span.end - self.span.start, self.kv_shape, self.span.dtype)
        return self.budget.free // per_token

    def check_range(self, start: object, end: object) -> tuple[int, int]:
        start = self.span.start if start is None else start
        end = self.span.end if end is None else end
        if not (isinstance(start, int) and isinstance(end, int) and self.span.start <= start < end <= self.span.end):
            raise BadRequest(
                f"blocks {start}:{end} are not within this server's blocks {self.span.start}:{self.span.end}"
            )
        return start, end

    def check_hidden(self, hidden: torch.Tensor, what: str = "hidden states") -> torch.Tensor:
        """A (batch, tokens, hidden) floating tensor in the span's dtype, or a one-line BadRequest."""
        if not hidden.is_floating_point():
            raise BadRequest(f"{what} must be floating point, got {hidden.dtype}")
        if hidden.ndim != 3 or hidden.shape[-1] != self.hidden_size or hidden.shape[0] < 1 or hidden.shape[1] < 1:
            raise BadRequest(f"{what} must have shape (batch, tokens, {self.hidden_size}), got {tuple(hidden.shape)}")
        return hidden.to(self.span.dtype)

    def open_session(
        self,
        start: object,
        end: object,
        batch_size: object,
        max_length: object,
        adapter: object = None,
        prompts: torch.Tensor | None = None,
    ) -> Session:
        """A session with its cache reserved; ``adapter`` and deep ``prompts`` apply to all of its steps."""
        start, end = self.check_range(start, end)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadRequest(f"batch size must be a positive integer, got {batch_size!r}")
        if not isinstance(max_length, int) or not 1 <= max_length <= self.max_session_length:
            raise BadRequest(f"max length must be between 1 and {self.max_session_length}, got {max_length!r}")
        adapter = self.adapters.check(adapter)
        if prompts is not None:
            prompts = self.check_prompts(prompts, torch.empty(batch_size, 1, self.hidden_size), start, end)
            if prompts.shape[2] > max_length:
                raise BadRequest(f"deep prompts cover {prompts.shape[2]} tokens, more than the session's {max_length}")
        nbytes = SpanCache.bytes_per_token(end - start, self.kv_shape, self.span.dtype) * batch_size * max_length
        self.budget.reserve(nbytes, f"a session of batch {batch_size} x {max_length} tokens on {end - start} blocks")
        try:
            cache = self.span.new_cache(start, end, batch_size, max_length)
        except BaseException:
            self.budget.release(nbytes)
            raise
        return Session(next(self._ids), start, end, cache, nbytes, adapter, prompts)

    def close_session(self, session: Session) -> None:
        self.budget.release(session.nbytes)
        session.cache = None  # type: ignore[assignment]  # frees the tensors now, not when the stream is collected

    def check_step(self, session: Session, hidden: torch.Tensor, position: object) -> tuple[torch.Tensor, int]:
        hidden = self.check_hidden(hidden)
        cache = session.cache
        if hidden.shape[0] != cache.batch_size:
            raise BadRequest(f"this session has batch size {cache.batch_size}, the step has {hidden.shape[0]}")
        if not isinstance(position, int) or not 0 <= position <= cache.length:
            raise BadRequest(f"step position must be between 0 and {cache.length} (tokens so far), got {position!r}")
        if position + hidden.shape[1] > cache.max_length:
            raise BadRequest(
                f"step would reach {position + hidden.shape[1]} tokens, past the session's maximum length "
                f"{cache.max_length}"
            )
        return hidden, position

    def inference_step(self, session: Session, hidden: torch.Tensor, position: int) -> torch.Tensor:
        """Runs on the compute thread; the arguments were checked by ``check_step``."""
        faults.check("step-error")
        with torch.inference_mode(), self.adapters.use(session.adapter):
            return self.span(hidden, position, session.cache, session.start, session.end, session.prompts)

    def check_batch(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.check_hidden(hidden)
        if hidden.shape[0] * hidden.shape[1] > self.max_request_tokens:
            raise BadRequest(
                f"request carries {hidden.shape[0] * hidden.shape[1]} tokens, more than this server's limit of "
                f"{self.max_request_tokens}; split it into smaller chunks"
            )
        return hidden

    def check_prompts(self, prompts: torch.Tensor | None, hidden: torch.Tensor, start: int, end: int):
        if prompts is None:
            return None
        expected = (end - start, hidden.shape[0])
        if prompts.ndim != 4 or tuple(prompts.shape[:2]) != expected or prompts.shape[-1] != self.hidden_size:
            raise BadRequest(
                f"deep prompts must have shape ({expected[0]}, {expected[1]}, prefix, {self.hidden_size}), "
                f"got {tuple(prompts.shape)}"
            )
        return prompts.to(self.span.dtype)

    def check_keep(self, keep: object) -> str | None:
        """A forward's or backward's ``keep`` id: the client's name for a forward whose backward will follow."""
        if keep is None:
            return None
        if not isinstance(keep, str) or not 0 < len(keep) <= 128:
            raise BadRequest(f"keep must be a string of at most 128 characters, got {keep!r}")
        return keep

    def forward(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        prompts: torch.Tensor | None,
        adapter: str | None = None,
        keep: tuple[str, str] | None = None,
    ) -> torch.Tensor:
        """Outputs of blocks [start, end); with ``keep`` (client, id), the graph is kept for that backward."""
        faults.check("step-error")
        if keep is None or self.activations.max_bytes <= 0:
            with torch.inference_mode(), self.adapters.use(adapter):
                return self.span(hidden, 0, None, start, end, prompts)
        counter = SavedBytes(self.span.parameters())
        with torch.enable_grad(), self.adapters.use(adapter):
            hidden = hidden.detach().requires_grad_(True)
            if prompts is not None:
                prompts = prompts.detach().requires_grad_(True)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                output = self.span(hidden, 0, None, start, end, prompts)
        nbytes = counter.total + output.untyped_storage().nbytes()
        kept = KeptForward(hidden, prompts, output, start, end, adapter, nbytes, self.activations.deadline())
        self.activations.put(keep, kept)
        return output.detach()

    def backward(
        self,
        hidden: torch.Tensor,
        grad_output: torch.Tensor,
        start: int,
        end: int,
        prompts: torch.Tensor | None,
        adapter: str | None = None,
        keep: tuple[str, str] | None = None,
    ) -> list[torch.Tensor]:
        """Gradients for the inputs (and deep prompts): from the kept forward if there is one, else recomputed."""
        faults.check("step-error")
        kept = self.activations.pop(keep) if keep is not None else None
        with torch.enable_grad():
            if kept is not None and kept.matches(hidden, prompts, start, end, adapter):
                leaves = [kept.inputs] if kept.prompts is None else [kept.inputs, kept.prompts]
                output = kept.output
            else:
                with self.adapters.use(adapter):
                    hidden = hidden.detach().requires_grad_(True)
                    leaves = [hidden]
                    if prompts is not None:
                        prompts = prompts.detach().requires_grad_(True)
                        leaves.append(prompts)
                    output = self.span(hidden, 0, None, start, end, prompts)
            return list(torch.autograd.grad(output, leaves, grad_output.to(output.dtype)))
