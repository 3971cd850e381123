"""A fault-tolerant inference session: attention caches held along a chain of servers, one step per token.

This is the paper's Algorithm 1. The client remembers, for every hop of the chain, each input it sent there
and at which position. When a server fails (its connection drops, it errors, it answers something wrong, or a
step gets no answer within the step timeout), the client bans it, finds a new chain for just that hop's blocks,
replays the remembered inputs at their original positions so the new servers rebuild the same attention caches,
and goes on with the step. Replayed steps keep their original shapes (one message per original step), so the new
servers compute bit for bit what the old one did and the generated tokens are the same as without the failure.

Spot-checks (``spot_check.py``): the first step a server gets from this client, and then a fraction of steps, also
go to a ``ShadowChain`` over the same blocks on other servers, beside the hop's own step. When the answers differ, a
third chain decides; a server that lied is banned and its hop rebuilt on honest servers before the step is redone,
so the text stays what the model gives. Steps an unchecked server answered before it was caught are not redone.

A step does not come back to the client between hops: it goes to the first server with the list of the servers
after it (and the keys of the sessions there), each server pushes its output straight to the next one, and every
server still answers the client, whose record of each hop's inputs stays complete for a replay. A server that could
not push says so and the client sends that hop the step itself; after a failure the rest of the step is sent under
a new step number, so answers to the failed attempt's pushes are skipped.

A server closes a session its client left idle for longer than the ``idle_timeout`` it announced when the
session opened. A client that comes back after such a pause (a user reading the answer) reopens that hop the
same way, without blaming anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import torch

from engine import wire
from engine.client.router import RetryBudget, describe_error, is_server_fault
from engine.client.routing import Hop, MissingBlocksError
from engine.client.shadow import ShadowChain
from engine.client.spot_check import Verdict, lie
from engine.client.stream import IDLE_MARGIN, History, InferenceStream, merge_steps
from engine.client.swarm import SwarmConnection

__all__ = ["IDLE_MARGIN", "HopState", "InferenceSession", "InferenceStream", "merge_steps"]

logger = logging.getLogger(__name__)


def truncate_history(history: History, length: int) -> History:
    """The steps of ``history`` cut to the positions before ``length``."""
    kept: History = []
    for position, hidden in history:
        if position >= length:
            break
        kept.append((position, hidden[:, : length - position]))
    return kept


@dataclass
class HopState:
    """One hop of a session's chain: its open stream and every input sent through it (for a replay)."""

    stream: InferenceStream
    history: History = field(default_factory=list)
    shadow: ShadowChain | None = None  # the second chain that spot-checks this hop, kept open between checks

    @property
    def hop(self) -> Hop:
        return self.stream.hop


def _expired(error: Exception) -> bool:
    return isinstance(error, wire.RemoteError) and error.expired


class InferenceSession:
    """Runs the remote blocks one step at a time, keeping each server's cache between steps, surviving failures.

    ``step`` is blocking and meant for the caller's thread; the network work runs on the swarm loop. A step
    survives up to ``max_retries`` server failures; after that, or when no server holds some blocks, it raises
    ``MissingBlocksError`` naming those blocks.
    """

    def __init__(
        self,
        swarm: SwarmConnection,
        num_blocks: int,
        max_length: int,
        batch_size: int = 1,
        step_timeout: float | None = None,
        max_retries: int | None = None,
        adapter: str | None = None,
        prompts: torch.Tensor | None = None,
    ):
        self.swarm = swarm
        self.adapter = adapter  # LoRA adapter of the whole session (None: the base model)
        self.prompts = prompts  # deep prompts (blocks, batch, prefix, hidden); servers add them at every step
        self.router = swarm.router
        self.num_blocks = num_blocks
        self.max_length = max_length
        self.batch_size = batch_size
        self.step_timeout = swarm.settings.step_timeout if step_timeout is None else step_timeout
        self.max_retries = swarm.settings.max_retries if max_retries is None else max_retries
        self.position = 0
        self.hops: list[HopState] = []
        self.recoveries = 0  # how many times a failed hop was replaced (diagnostics, benchmarks)
        self.reopened = 0  # how many times a hop idle past its server's timeout was reopened (no failure)
        self._steps_sent = 0  # steps are numbered, so that a server drops a push of a step it computed already
        self.pushed = 0  # hop inputs a server passed straight to the next one (diagnostics, benchmarks)
        self._closed = False

    @property
    def route(self) -> list[Hop]:
        return [state.hop for state in self.hops]

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send new tokens' hidden states (batch, tokens, hidden) through all blocks; returns the outputs."""
        if self._closed:
            raise RuntimeError("this inference session is closed")
        if self.position + hidden.shape[1] > self.max_length:
            raise ValueError(
                f"step would reach {self.position + hidden.shape[1]} tokens, past the session's maximum length "
                f"{self.max_length}"
            )
        output = self.swarm.run(self._step(hidden))
        self.position += hidden.shape[1]
        return output

    def rollback(self, length: int) -> None:
        """Forget every token from position ``length`` on (rejected speculative tokens): the next step is written
        there, and each server rolls its cache back when it sees that step's position. Nothing is sent now."""
        if not 0 <= length <= self.position:
            raise ValueError(f"cannot roll back to {length}: the session holds {self.position} tokens")
        self.position = length
        for state in self.hops:
            state.history = truncate_history(state.history, length)

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        budget = RetryBudget(self.max_retries)
        if not self.hops:
            self.hops = await self._build(0, self.num_blocks, [], budget)
        position, index = self.position, 0
        self._steps_sent += 1
        number, pushed = self._steps_sent, False  # pushed: the previous server handed this hop its input
        while index < len(self.hops):
            state = self.hops[index]
            try:
                if state.stream.expiring:
                    raise wire.RemoteError(state.hop.peer_id, "session idle past the server's timeout", expired=True)
                due = self.router.spot.due(state.hop)
                if pushed:  # the previous server handed this hop its input: only the answer is to be read
                    self.pushed += 1
                    main = state.stream.pushed_step(hidden, number, self.step_timeout)
                else:  # a hop under a spot-check hands its output on only once it is verified
                    targets = None if due else self._push_targets(index)
                    main = state.stream.numbered_step(hidden, position, number, self.step_timeout, targets)
                if due:
                    output, pushed, lied = await self._checked_step(state, main, hidden, position, budget)
                else:
                    (output, pushed), lied = await main, False
            except Exception as error:
                # The rest of the step is sent anew under a new number: answers to pushes of the old one (perhaps
                # computed from a broken server's output) are skipped, and pushes of the new one are taken.
                self._steps_sent += 1
                number, pushed = self._steps_sent, False
                if not (_expired(error) or is_server_fault(error)):
                    raise  # the request itself was refused: the session stays as it was
                state.stream.abort()
                if _expired(error):
                    self.reopened += 1  # nobody failed: open the hop again and replay, without a ban
                else:
                    self.router.recover(state.hop, error, budget)
                    self.recoveries += 1
                await self._replace(index, state, budget)
                continue  # the same step, on the new hop(s)
            if lied:  # its server is banned: redo the step on a new chain for its blocks, from honest servers
                self._steps_sent += 1  # under a new number: answers to what the liar pushed on are skipped
                number, pushed = self._steps_sent, False
                state.stream.abort()
                self.recoveries += 1
                await self._replace(index, state, budget)
                continue
            state.history.append((position, hidden))
            hidden = output
            index += 1
        return hidden

    def _push_targets(self, index: int) -> list[dict] | None:
        """The servers after hop ``index`` (peer ids and push keys), for its server to push the step's output along
        the chain; None where pushes are off (``ClientSettings.no_push``) or it is the last hop."""
        if self.swarm.settings.no_push or index + 1 >= len(self.hops):
            return None
        return [{"peer": state.hop.peer_id, "key": state.stream.push_key} for state in self.hops[index + 1 :]]

    async def _replace(self, index: int, state: HopState, budget: RetryBudget) -> None:
        """Put a new chain for ``state``'s blocks in its place, its caches rebuilt from the hop's history."""
        began = time.perf_counter()
        if state.shadow is not None:
            state.shadow.abort()
            state.shadow = None
        replacement = await self._build(state.hop.start, state.hop.end, state.history, budget)
        self.hops[index : index + 1] = replacement
        logger.info(
            "blocks %d:%d moved to %s in %.3f s, replaying %d steps",
            state.hop.start,
            state.hop.end,
            ", ".join(f"{new.hop.start}:{new.hop.end}@{new.hop.peer_id[-8:]}" for new in replacement),
            time.perf_counter() - began,
            len(state.history),
        )

    async def _build(self, start: int, end: int, history: History, budget: RetryBudget) -> list[HopState]:
        """Open a chain over [start, end) and replay ``history`` through it, retrying on other servers."""
        excluded: set[str] = set()  # servers that refused this session (e.g. cache full): try the others
        refusal: wire.RemoteError | None = None
        while True:
            try:
                route = await self.router.inference_chain(
                    start, end, self.batch_size * self.max_length, excluded, self.adapter
                )
            except MissingBlocksError:
                if refusal is not None:
                    raise refusal from None  # every server that holds the blocks refused: say why
                raise
            opened = await asyncio.gather(
                *(
                    InferenceStream.open(
                        self.swarm.p2p,
                        hop,
                        self.batch_size,
                        self.max_length,
                        self.step_timeout,
                        self.adapter,
                        self.prompts,
                    )
                    for hop in route
                ),
                return_exceptions=True,
            )
            streams = [stream for stream in opened if isinstance(stream, InferenceStream)]
            failures = [(hop, error) for hop, error in zip(route, opened, strict=True) if isinstance(error, Exception)]
            if len(streams) + len(failures) < len(opened):  # a cancellation: not a server's doing
                raise next(error for error in opened if isinstance(error, BaseException))
            if failures:
                for stream in streams:
                    await stream.close()
                for hop, error in failures:
                    if isinstance(error, wire.RemoteError) and not error.unavailable:
                        excluded.add(hop.peer_id)  # it refused this session; others may take it
                        refusal = error
                    else:
                        self.router.recover(hop, error, budget)
                continue
            hops = [HopState(stream) for stream in streams]
            failure = await self._replay(hops, history)
            if failure is not None:
                for stream in streams:
                    stream.abort()
                self.router.recover(*failure, budget)
                continue
            for stream in streams:
                self.router.served(stream.hop.peer_id)
            return hops

    async def _replay(self, hops: list[HopState], history: History) -> tuple[Hop, Exception] | None:
        """Replay ``history`` through ``hops`` in order (each hop's outputs are the next one's inputs).

        Returns the hop that failed and its error, or None when every hop has rebuilt its cache.
        """
        inputs = merge_steps(history) if self.swarm.settings.batched_replay else history
        for state in hops:
            state.history = list(inputs)
            if not inputs:
                continue
            try:
                outputs = await state.stream.replay(inputs, self.step_timeout)
            except Exception as error:
                return state.hop, error
            inputs = [(position, output) for (position, _), output in zip(inputs, outputs, strict=True)]
        return None

    # --- spot-checks (engine/client/spot_check.py) ---------------------------------------------------------------

    async def _checked_step(
        self,
        state: HopState,
        main: Awaitable[tuple[torch.Tensor, bool]],
        hidden: torch.Tensor,
        position: int,
        budget: RetryBudget,
    ) -> tuple[torch.Tensor, bool, bool]:
        """The hop's step (``main``: its output and whether it pushed it on), compared with a shadow chain's
        answer computed beside it.

        Returns the hop's output, whether it pushed it on, and whether its server lied (it is then banned, and the
        step must be redone).
        """
        began = time.perf_counter()
        answer, second = await asyncio.gather(
            main, self._second_opinion(state, hidden, position), return_exceptions=True
        )
        spot = self.router.spot
        spot.stats.seconds += time.perf_counter() - began
        if isinstance(answer, BaseException):
            raise answer
        output, pushed = answer
        if isinstance(second, BaseException):
            raise second  # a cancellation: failures of the second opinion leave the step unverified instead
        if second is None:
            return output, pushed, False
        shadow = state.shadow
        third: list[ShadowChain] = []

        async def third_opinion() -> list[torch.Tensor] | None:
            chain = await self._open_shadow(state.hop, [state.hop.peer_id, *shadow.peers])
            if chain is None:
                return None
            third.append(chain)
            try:
                return [await chain.catch_up(state.history, position, hidden, self.step_timeout)]
            except Exception as error:
                self._shadow_failed(state.hop, error)
                return None

        hop = state.hop
        what = f"blocks {hop.start}:{hop.end} on server {hop.peer_id[-8:]}"
        verdict = await spot.settle([output], [second], third_opinion, what)
        deciders = third[0].peers if third else []
        liars = spot.judged(verdict, hop.peer_id, shadow.peers, deciders)
        if verdict == Verdict.VERIFIER_LIED:
            for stream in shadow.streams:
                self.router.failed(stream.hop, lie(stream.hop))
            shadow.abort()
            state.shadow = third.pop()  # the decider's caches are as far as the hop's: it checks from now on
        for chain in third:
            chain.abort()
        if hop.peer_id in liars:
            self.router.recover(hop, lie(hop), budget)  # bans it; a lie counts against the step's retries
        return output, pushed, hop.peer_id in liars

    async def _second_opinion(self, state: HopState, hidden: torch.Tensor, position: int) -> torch.Tensor | None:
        """The output of ``state``'s blocks for this step from its shadow chain (opened now if needed), or None
        when no other server can give it; a failing shadow server is banned, the step then goes unverified."""
        if state.shadow is not None and state.shadow.expiring:  # its servers may be closing the idle sessions
            state.shadow.abort()
            state.shadow = None
        if state.shadow is None:
            state.shadow = await self._open_shadow(state.hop, [])
            if state.shadow is None:
                return None
        try:
            return await state.shadow.catch_up(state.history, position, hidden, self.step_timeout)
        except Exception as error:
            state.shadow.abort()
            state.shadow = None
            self._shadow_failed(state.hop, error)
            return None

    async def _open_shadow(self, hop: Hop, avoid: list[str]) -> ShadowChain | None:
        """A shadow chain over exactly ``hop``'s blocks avoiding ``avoid``; None (counted unverified) if none opens."""
        route = await self.router.second_route(hop, avoid, self.adapter)
        if route is None:
            self.router.spot.unverified(hop, "no other server holds these blocks", lonely=not avoid)
            return None
        try:
            return await ShadowChain.open(
                self.swarm.p2p, route, self.batch_size, self.max_length, self.step_timeout, self.adapter, self.prompts
            )
        except Exception as error:
            if not (_expired(error) or is_server_fault(error)):
                raise  # a bug of ours, or a cancellation
            self.router.spot.unverified(hop, f"the second server did not open a session: {describe_error(error)}")
            return None

    def _shadow_failed(self, hop: Hop, error: Exception) -> None:
        """A shadow server failed: ban it if it is its fault (not the step's), and leave the step unverified."""
        failed = getattr(error, "shadow_hop", None)
        if failed is not None and is_server_fault(error) and not _expired(error):
            self.router.failed(failed, error)
        elif not (_expired(error) or is_server_fault(error) or isinstance(error, wire.RemoteError)):
            raise error
        self.router.spot.unverified(hop, f"the second server failed: {describe_error(error)}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.hops and not self.swarm.loop.is_closed():
            self.swarm.run(self._close_streams(), timeout=10)

    async def _close_streams(self) -> None:
        shadows = [state.shadow for state in self.hops if state.shadow is not None]
        await asyncio.gather(*(state.stream.close() for state in self.hops), *(shadow.close() for shadow in shadows))

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
