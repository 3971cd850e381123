"""``engine.server.backend`` and ``memory``: request checks and the cache budget, in process (no transport)."""

from __future__ import annotations

import pytest
import torch

from engine.models.span import SpanCache, load_span
from engine.server.backend import SpanBackend
from engine.server.limits import Admission, RequestLimits, TooBusy
from engine.server.memory import CacheBudget, format_bytes
from engine.weights import resolve_model
from engine.wire import BadRequest


@pytest.fixture
def backend(tiny_checkpoints) -> SpanBackend:
    span = load_span(resolve_model(tiny_checkpoints("llama")), 1, 3, torch.float32)
    per_token = SpanCache.bytes_per_token(2, span.family.kv_shape(span.config), torch.float32)
    return SpanBackend(span, CacheBudget(40 * per_token), max_session_length=32, max_request_tokens=64)


def test_budget_reserves_releases_and_refuses_clearly() -> None:
    budget = CacheBudget(3 * 2**20)
    budget.reserve(2 * 2**20, "first")
    assert budget.free == 2**20
    with pytest.raises(BadRequest, match="second needs 1.5 MiB of attention cache but only 1.0 MiB of 3.0 MiB"):
        budget.reserve(3 * 2**19, "second")
    budget.release(2 * 2**20)
    assert budget.free == budget.capacity
    budget.release(5)  # an extra release never makes the budget larger than it is
    assert budget.used == 0
    with pytest.raises(ValueError, match="cache budget must be positive, got 0 bytes"):
        CacheBudget(0)


def test_format_bytes_keeps_small_budgets_readable() -> None:
    assert [format_bytes(size) for size in (512, 1536, 5 * 2**20, 3 * 2**30)] == [
        "512 B",
        "1.5 KiB",
        "5.0 MiB",
        "3.0 GiB",
    ]


def test_sessions_take_and_return_cache(backend: SpanBackend) -> None:
    assert backend.free_cache_tokens == 40
    session = backend.open_session(None, None, 1, 32)
    assert (session.start, session.end) == (1, 3) and backend.free_cache_tokens == 8
    with pytest.raises(BadRequest, match="a session of batch 1 x 16 tokens on 2 blocks needs"):
        backend.open_session(1, 3, 1, 16)
    smaller = backend.open_session(2, 3, 1, 16)  # one block needs half as much per token
    backend.close_session(session)
    backend.close_session(smaller)
    assert backend.free_cache_tokens == 40


def test_steps_may_roll_back_but_not_skip(backend: SpanBackend) -> None:
    session = backend.open_session(1, 3, 1, 8)
    hidden, position = backend.check_step(session, torch.zeros(1, 5, 64), 0)
    backend.inference_step(session, hidden, position)
    assert session.cache.length == 5
    assert backend.check_step(session, torch.zeros(1, 2, 64), 3)[1] == 3  # a replay from an earlier position
    with pytest.raises(BadRequest, match="step position must be between 0 and 5 \\(tokens so far\\), got 6"):
        backend.check_step(session, torch.zeros(1, 1, 64), 6)
    with pytest.raises(BadRequest, match="step would reach 9 tokens, past the session's maximum length 8"):
        backend.check_step(session, torch.zeros(1, 4, 64), 5)


def test_request_checks(backend: SpanBackend) -> None:
    with pytest.raises(BadRequest, match="blocks 0:3 are not within this server's blocks 1:3"):
        backend.check_range(0, 3)
    with pytest.raises(BadRequest, match="hidden states must be floating point, got torch.int32"):
        backend.check_hidden(torch.zeros(1, 1, 64, dtype=torch.int32))
    with pytest.raises(BadRequest, match="request carries 65 tokens, more than this server's limit of 64"):
        backend.check_batch(torch.zeros(1, 65, 64))
    assert backend.check_hidden(torch.zeros(1, 1, 64, dtype=torch.float16)).dtype == torch.float32
    with pytest.raises(BadRequest, match="deep prompts must have shape \\(2, 1, prefix, 64\\), got \\(2, 1, 3\\)"):
        backend.check_prompts(torch.zeros(2, 1, 3), torch.zeros(1, 4, 64), 1, 3)


def test_peer_share_of_the_cache_budget() -> None:
    budget = CacheBudget(4 * 2**20, peer_share=0.5)
    budget.reserve(2**20, "first", "alice")
    budget.reserve(2**20, "second", "alice")
    with pytest.raises(BadRequest, match="third needs 1.0 MiB of attention cache; this client already holds 2.0 MiB"):
        budget.reserve(2**20, "third", "alice")
    budget.reserve(2 * 2**20, "another client's", "bob")  # the rest is still there for others
    budget.release(2**20, "alice")
    assert budget.free == 2**20 and budget.used == 3 * 2**20
    with pytest.raises(ValueError, match="a client's share of the cache must be in \\(0, 1\\], got 0"):
        CacheBudget(2**20, peer_share=0)


def test_sixteen_bit_backward_keeps_tiny_gradients(tiny_checkpoints) -> None:
    """A mean loss over many tokens gives gradients around 1e-7, below float16's smallest normal number (6e-5):
    unscaled, they would flush to zero in a float16 span. Scaled first, they agree with float32."""
    source = resolve_model(tiny_checkpoints("llama"))
    hidden = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    grad = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)) * 1e-7
    reference = load_span(source, 0, 4, torch.float32)
    leaf = hidden.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference(leaf), [leaf], grad)
    for dtype, tolerance in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        span = load_span(source, 0, 4, dtype)
        backend = SpanBackend(span, CacheBudget(2**20), max_session_length=32, max_request_tokens=64)
        [got] = backend.backward(backend.check_batch(hidden), backend.check_gradients(grad, hidden), 0, 4, None)
        assert got.dtype == (torch.float32 if dtype == torch.float16 else dtype)  # float16's range is too narrow
        error = ((got.float() - expected).abs().max() / expected.abs().max()).item()
        assert error < tolerance, f"{dtype}: relative error {error:.2e}"


def test_sessions_and_jobs_per_client_and_in_total() -> None:
    admission = Admission(RequestLimits(max_sessions=3, max_sessions_per_peer=2, max_jobs_per_peer=1))
    with admission.session("a"), admission.session("a"):
        with pytest.raises(BadRequest, match="this client already holds 2 sessions here"):
            admission.session("a").__enter__()
        with admission.session("b"), pytest.raises(TooBusy, match="server holds its maximum of 3 sessions"):
            admission.session("c").__enter__()
        with admission.job("a"):
            with pytest.raises(TooBusy, match="this client already has 1 requests queued or running here"):
                admission.job("a").__enter__()
            with admission.job("b"):
                pass
    assert admission.open_sessions == 0 and not admission.jobs
    sized = Admission(RequestLimits(max_queued_bytes=100))
    with sized.job("a", 60):
        with pytest.raises(TooBusy, match="queued requests hold 0 MiB, its limit is 0 MiB"):
            sized.job("b", 60).__enter__()
        with sized.job("b", 40):
            pass
    with sized.job("a", 1000):  # one request larger than the limit still runs when nothing else is queued
        assert sized.queued_bytes == 1000
    assert sized.queued_bytes == 0
    with pytest.raises(ValueError, match="--max-sessions-per-peer must be at least 1, got 0"):
        RequestLimits(max_sessions_per_peer=0)
