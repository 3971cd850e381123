"""Runs requests on a server's span: validates them, keeps sessions' caches, computes on the compute thread.

Request tensors arrive on the CPU in the sender's dtype. The checks (``check_*``, on the event loop) validate them
and cast them to the span's dtype without allocating more than the request itself; the compute functions (on the
compute thread) move them to the span's device and move their results back to the CPU for the wire, so the event
loop never waits for a GPU.
"""

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
    peer: str = ""  # the client that opened it: its cache counts against that client's share


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
        faults.tamper(span.layers)
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

    @property
    def gradient_dtype(self) -> torch.dtype:
        """Gradients go back in float32 from float16 spans (whose range is too narrow for them), else as computed."""
        return torch.float32 if self.span.dtype == torch.float16 else self.span.dtype

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
        return self._check_shape(hidden, what).to(self.span.dtype)

    def check_gradients(self, grad_output: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Output gradients shaped like the inputs, kept in float32 (``backward`` scales them first)."""
        grad_output = self._check_shape(grad_output, "output gradients")
        if grad_output.shape != hidden.shape:
            raise BadRequest(f"output gradients have shape {tuple(grad_output.shape)}, inputs {tuple(hidden.shape)}")
        return grad_output.float()

    def _check_shape(self, hidden: torch.Tensor, what: str) -> torch.Tensor:
        if not hidden.is_floating_point():
            raise BadRequest(f"{what} must be floating point, got {hidden.dtype}")
        if hidden.ndim != 3 or hidden.shape[-1] != self.hidden_size or hidden.shape[0] < 1 or hidden.shape[1] < 1:
            raise BadRequest(f"{what} must have shape (batch, tokens, {self.hidden_size}), got {tuple(hidden.shape)}")
        return hidden

    def check_tokens(self, batch: int, tokens: int) -> None:
        """One request (a forward, a backward or an inference step) may carry at most ``max_request_tokens``."""
        if batch * tokens > self.max_request_tokens:
            raise BadRequest(
                f"request carries {batch * tokens} tokens, more than this server's limit of "
                f"{self.max_request_tokens}; split it into smaller chunks"
            )

    def open_session(
        self,
        start: object,
        end: object,
        batch_size: object,
        max_length: object,
        adapter: object = None,
        prompts: torch.Tensor | None = None,
        peer: str = "",
    ) -> Session:
        """A session with its cache reserved; ``adapter`` and deep ``prompts`` apply to all of its steps.

        Every limit is checked before anything is allocated; the cache counts against ``peer``'s share.
        """
        start, end = self.check_range(start, end)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= self.max_request_tokens:
            raise BadRequest(
                f"batch size must be a positive integer up to {self.max_request_tokens}, got {batch_size!r}"
            )
        if not isinstance(max_length, int) or not 1 <= max_length <= self.max_session_length:
            raise BadRequest(f"max length must be between 1 and {self.max_session_length}, got {max_length!r}")
        adapter = self.adapters.check(adapter)
        if prompts is not None:
            prompts = self._check_prompt_shape(prompts, batch_size, start, end)
            if prompts.shape[2] > max_length:
                raise BadRequest(f"deep prompts cover {prompts.shape[2]} tokens, more than the session's {max_length}")
        nbytes = SpanCache.bytes_per_token(end - start, self.kv_shape, self.span.dtype) * batch_size * max_length
        what = f"a session of batch {batch_size} x {max_length} tokens on {end - start} blocks"
        self.budget.reserve(nbytes, what, peer)
        try:
            cache = self.span.new_cache(start, end, batch_size, max_length)
            if prompts is not None:
                prompts = prompts.to(self.span.device)
        except BaseException:
            self.budget.release(nbytes, peer)
            raise
        return Session(next(self._ids), start, end, cache, nbytes, adapter, prompts, peer)

    def close_session(self, session: Session) -> None:
        self.budget.release(session.nbytes, session.peer)
        session.cache = None  # type: ignore[assignment]  # frees the tensors now, not when the stream is collected

    def check_step(self, session: Session, hidden: torch.Tensor, position: object) -> tuple[torch.Tensor, int]:
        hidden = self.check_hidden(hidden)
        cache = session.cache
        if hidden.shape[0] != cache.batch_size:
            raise BadRequest(f"this session has batch size {cache.batch_size}, the step has {hidden.shape[0]}")
        self.check_tokens(hidden.shape[0], hidden.shape[1])
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
            output = self.span(
                self._on_device(hidden), position, session.cache, session.start, session.end, session.prompts
            )
        return faults.corrupt(output.cpu())

    def inference_steps(
        self, sessions: list[Session], hiddens: list[torch.Tensor], positions: list[int]
    ) -> list[torch.Tensor]:
        """One-token steps of several sessions (same blocks, same adapter, no deep prompts) as one batched forward,
        on the compute thread; each session's output is what ``inference_step`` gives it alone, up to rounding."""
        faults.check("step-error")
        first = sessions[0]
        with torch.inference_mode(), self.adapters.use(first.adapter):
            output = self.span.batched_step(
                self._on_device(torch.cat(hiddens)),
                positions,
                [session.cache for session in sessions],
                first.start,
                first.end,
            ).cpu()
        return [faults.corrupt(part.clone()) for part in output.split([hidden.shape[0] for hidden in hiddens])]

    def owner(self, session: Session) -> SpanBackend:
        """The backend whose span holds ``session``'s cache (this one; see ``BackendSwitch``)."""
        return self

    def check_batch(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.check_hidden(hidden)
        self.check_tokens(hidden.shape[0], hidden.shape[1])
        return hidden

    def _check_prompt_shape(self, prompts: torch.Tensor, batch: int, start: int, end: int) -> torch.Tensor:
        if not prompts.is_floating_point():
            raise BadRequest(f"deep prompts must be floating point, got {prompts.dtype}")
        expected = (end - start, batch)
        if prompts.ndim != 4 or tuple(prompts.shape[:2]) != expected or prompts.shape[-1] != self.hidden_size:
            raise BadRequest(
                f"deep prompts must have shape ({expected[0]}, {expected[1]}, prefix, {self.hidden_size}), "
                f"got {tuple(prompts.shape)}"
            )
        return prompts.to(self.span.dtype)

    def check_prompts(self, prompts: torch.Tensor | None, hidden: torch.Tensor, start: int, end: int):
        return None if prompts is None else self._check_prompt_shape(prompts, hidden.shape[0], start, end)

    def check_keep(self, keep: object) -> str | None:
        """A forward's or backward's ``keep`` id: the client's name for a forward whose backward will follow."""
        if keep is None:
            return None
        if not isinstance(keep, str) or not 0 < len(keep) <= 128:
            raise BadRequest(f"keep must be a string of at most 128 characters, got {keep!r}")
        return keep

    def _on_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(self.span.device)

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
        hidden, prompts = self._on_device(hidden), self._on_device(prompts)
        if keep is None or self.activations.max_bytes <= 0:
            with torch.inference_mode(), self.adapters.use(adapter):
                return faults.corrupt(self.span(hidden, 0, None, start, end, prompts).cpu())
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
        return faults.corrupt(output.detach().cpu())

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
        """Gradients for the inputs (and deep prompts): from the kept forward if there is one, else recomputed.

        ``grad_output`` arrives in float32 (or the sender's dtype) and is scaled to a largest magnitude of 1 before it
        meets the span's dtype: a float16 span would flush the tiny gradients of a mean loss to zero (and a large
        one could overflow). Gradients are linear in it, so the results are scaled back in float32.
        """
        faults.check("step-error")
        hidden, prompts = self._on_device(hidden), self._on_device(prompts)
        grad_output = grad_output.to(self.span.device, torch.float32)
        scale = grad_output.abs().max()
        scale = torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
        kept = self.activations.pop(keep) if keep is not None else None
        seed = grad_output / scale
        if kept is not None and kept.matches(hidden, prompts, start, end, adapter):
            leaves = [kept.inputs] if kept.prompts is None else [kept.inputs, kept.prompts]
            with torch.enable_grad():
                grads = list(torch.autograd.grad(kept.output, leaves, seed.to(kept.output.dtype)))
        else:
            with self.adapters.use(adapter):
                grads = self._recompute_backward(hidden, seed, start, end, prompts)
        return [faults.corrupt((grad.float() * scale).to(self.gradient_dtype).cpu()) for grad in grads]

    def _recompute_backward(
        self, hidden: torch.Tensor, seed: torch.Tensor, start: int, end: int, prompts: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """Gradients of blocks [start, end) by recomputing their forward, one block's graph at a time.

        A first pass without autograd keeps only each block's input; then, from the last block back, each block is
        run again with autograd and its gradient taken. The results equal a backward through the whole span's
        graph, but the memory held is one input per block plus one block's graph (``span_size`` budgets this).
        """
        inputs = []
        with torch.inference_mode():
            for index in range(start, end):
                inputs.append(hidden)
                hidden = self.span(hidden, 0, None, index, index + 1, _block_prompts(prompts, index - start))
        grad, prompt_grads = seed, []
        for index in reversed(range(start, end)):
            with torch.enable_grad():
                block_input = inputs[index - start].clone().requires_grad_(True)
                leaves = [block_input]
                block_prompts = _block_prompts(prompts, index - start)
                if block_prompts is not None:
                    block_prompts = block_prompts.clone().requires_grad_(True)
                    leaves.append(block_prompts)
                output = self.span(block_input, 0, None, index, index + 1, block_prompts)
                grads = torch.autograd.grad(output, leaves, grad.to(output.dtype))
            grad = grads[0]
            if block_prompts is not None:
                prompt_grads.append(grads[1])
        if prompts is None:
            return [grad]
        return [grad, torch.cat(prompt_grads[::-1], dim=0)]


def _block_prompts(prompts: torch.Tensor | None, offset: int) -> torch.Tensor | None:
    """The deep prompts of one block of a request (a leading dimension of 1), or None."""
    return None if prompts is None else prompts[offset : offset + 1]
