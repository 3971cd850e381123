"""Spot-checks: is a server running the model it claims? Compare its answer with another server's, of the same blocks.

Nothing in an answer's shape tells altered weights or made-up numbers from the real thing, so a client sends the same
inputs to a second server (or a short chain of servers) covering exactly the same blocks and compares the outputs.
It checks every server the first time it uses it, and then a configurable fraction of steps. When the two disagree a
third server decides: the side it agrees with is honest, the other is banned and the honest outputs are used.

Honest servers do not agree bit for bit: bfloat16 against float32, CPU against GPU kernels and a batched replay
against step-by-step steps round differently. ``token_error`` measures, for each token, the distance between the two
hidden states (or gradients) relative to the larger of their norms, and ``agree`` allows ``tolerance`` of it. Measured
on SmolLM2-135M, a bfloat16 server against a float32 one differs by at most 0.03 per token over 15 or 30 blocks (the
first token's hidden state is huge, but the ratio is per token, so small tokens count as much); Gaussian noise of 10%
of each tensor's spread added to 2 blocks moves some token by 0.14-0.37, made-up numbers or zeros by about 1. The
default tolerance 0.1 is 3x the honest bfloat16 spread; an alteration that moves no token by 10% slips through, as
it must if bfloat16 servers are to be accepted. Quantized servers are only compared with servers of the same
quantization (nf4 against float would differ by more than any useful tolerance).
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from engine.client.answers import BadAnswer
from engine.client.routing import Hop, MissingBlocksError, make_route
from engine.records import ServerRecord

logger = logging.getLogger(__name__)

# Blocks that no second server could verify are not looked up again for this long: a lookup reads the DHT, and a
# swarm with a single server for some blocks would otherwise pay that read on every step.
LONELY_SECONDS = 30.0


def token_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest per-token distance between two (..., hidden) tensors, relative to the larger of the two norms.

    In [0, 2]: 0 when equal, about 1 against zeros or unrelated numbers. A token where both are (near) zero counts as
    equal: a floor of 1e-6 of the largest token norm keeps rounding noise on it from counting.
    """
    actual, expected = actual.float(), expected.float()
    if actual.shape != expected.shape:
        return float("inf")
    if actual.numel() == 0:
        return 0.0
    difference = (actual - expected).flatten(0, -2).norm(dim=-1)
    scale = torch.maximum(actual.flatten(0, -2).norm(dim=-1), expected.flatten(0, -2).norm(dim=-1))
    floor = max(float(scale.max()) * 1e-6, 1e-30)
    return float((difference / scale.clamp_min(floor)).max())


def agree(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], tolerance: float) -> bool:
    """True if every tensor of two answers is within ``tolerance`` (``token_error``) of its counterpart."""
    return len(actual) == len(expected) and all(
        token_error(a, b) <= tolerance for a, b in zip(actual, expected, strict=True)
    )


class Verdict(enum.Enum):
    AGREED = "agreed"  # the checked server and the verifier agree
    CHECKED_LIED = "checked server lied"  # the third sided with the verifier
    VERIFIER_LIED = "verifier lied"  # the third sided with the checked server
    UNDECIDED = "undecided"  # no third server, or it agreed with neither


@dataclass
class SpotCheckStats:
    """What spot-checks did on one connection (diagnostics, benchmarks)."""

    checks: int = 0  # hops compared with a second server
    unverified: int = 0  # hops due for a check that went unchecked: no second server of the same blocks answered
    mismatches: int = 0  # checks where the two disagreed (a third server was asked)
    banned: int = 0  # servers banned for a wrong answer
    undecided: int = 0  # mismatches no third server could settle
    seconds: float = 0.0  # wall time of checked requests (both answers, side by side) and of third opinions


class SpotChecker:
    """Which servers this client has verified, when to check, and the tolerance; one per ``Router``.

    ``fraction`` 0 turns spot-checks off (new servers included); above 0, a server is checked on the first request
    this client sends it and then on ``fraction`` of requests.
    """

    def __init__(
        self,
        fraction: float,
        tolerance: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fraction, self.tolerance = fraction, tolerance
        self.rng, self.clock = rng or random.Random(), clock
        self.verified: set[str] = set()
        self.stats = SpotCheckStats()
        self._lonely: dict[tuple[str, int, int], float] = {}  # (peer, start, end) -> when to look for a verifier again

    def due(self, hop: Hop) -> bool:
        """Whether to check this request to ``hop``: always for an unverified server, else at ``fraction``."""
        if self.fraction <= 0:
            return False
        if not (hop.peer_id not in self.verified or self.rng.random() < self.fraction):
            return False
        key = (hop.peer_id, hop.start, hop.end)
        if self._lonely.get(key, 0.0) > self.clock():
            self.stats.unverified += 1  # nobody else held these blocks a moment ago
            return False
        return True

    def unverified(self, hop: Hop, why: str, lonely: bool = False) -> None:
        """A due check could not run; ``lonely``: no other server holds the blocks (do not look again for a while)."""
        self.stats.unverified += 1
        if lonely:
            self._lonely[(hop.peer_id, hop.start, hop.end)] = self.clock() + LONELY_SECONDS
        logger.debug("blocks %d:%d on server %s go unverified: %s", hop.start, hop.end, hop.peer_id[-8:], why)

    def trusted(self, peers: Collection[str]) -> None:
        self.verified.update(peers)

    def distrusted(self, peers: Collection[str]) -> None:
        self.verified.difference_update(peers)

    def judged(self, verdict: Verdict, checked: str, second: Sequence[str], third: Sequence[str]) -> list[str]:
        """Record who was right after ``settle``; returns the liars, for the caller to ban (and count here)."""
        liars: list[str] = []
        if verdict == Verdict.AGREED:
            self.trusted([checked, *second])
        elif verdict == Verdict.CHECKED_LIED:
            self.trusted([*second, *third])
            liars = [checked]
        elif verdict == Verdict.VERIFIER_LIED:
            self.trusted([checked, *third])
            liars = list(second)
        self.distrusted(liars)
        self.stats.banned += len(liars)
        if liars:
            logger.warning(
                "server(s) %s answered unlike %s: banned as liars",
                ", ".join(peer[-8:] for peer in liars),
                ", ".join(peer[-8:] for peer in {checked, *second, *third} - set(liars)),
            )
        return liars

    async def settle(
        self,
        checked: Sequence[torch.Tensor],
        second: Sequence[torch.Tensor],
        third: Callable[[], Awaitable[Sequence[torch.Tensor] | None]],
        what: str,
    ) -> Verdict:
        """Compare a checked answer with a second one; on a mismatch ask ``third`` (None: no third server) to decide."""
        self.stats.checks += 1
        if agree(checked, second, self.tolerance):
            return Verdict.AGREED
        self.stats.mismatches += 1
        began = time.perf_counter()
        try:
            decider = await third()
        finally:
            self.stats.seconds += time.perf_counter() - began
        errors = ", ".join(f"{token_error(a, b):.3g}" for a, b in zip(checked, second, strict=True))
        if decider is not None and agree(checked, decider, self.tolerance):
            verdict = Verdict.VERIFIER_LIED
        elif decider is not None and agree(second, decider, self.tolerance):
            verdict = Verdict.CHECKED_LIED
        else:
            verdict = Verdict.UNDECIDED
            self.stats.undecided += 1
        log = logger.info if verdict != Verdict.UNDECIDED else logger.warning
        log(
            "spot-check of %s: answers differ by %s per token (tolerance %g): %s",
            what,
            errors,
            self.tolerance,
            verdict.value,
        )
        return verdict


def lie(hop: Hop) -> BadAnswer:
    """The error a server is banned with when a third server sided against it."""
    return BadAnswer(f"server {hop.peer_id[-8:]} answered blocks {hop.start}:{hop.end} unlike other servers")


def second_route(
    blocks: dict[int, list[ServerRecord]], hop: Hop, avoid: Collection[str], rng: random.Random
) -> list[Hop] | None:
    """A route over exactly ``hop``'s blocks through other servers of the same quantization, or None if none exists.

    Fewest hops first (a server whose span contains the hop's blocks runs just those), so a verdict names one server.
    """
    same_kind = {
        index: [record for record in records if record.quantization == hop.record.quantization]
        for index, records in blocks.items()
    }
    try:
        return make_route(same_kind, hop.start, hop.end, {hop.peer_id, *avoid}, rng)
    except MissingBlocksError:
        return None
