"""Speculative decoding: propose several tokens, check them in one trip along the chain, keep what the model accepts.

A step through the swarm costs a round trip along the chain, whatever the number of tokens it carries, so a step that
checks k proposed tokens can give up to k + 1 tokens for the price of one. Proposals come from a drafter: n-gram
lookup in the text so far (free, and strong on input-grounded tasks: summaries, edits, code), or a small local draft
model that shares the tokenizer. The acceptance rule of speculative sampling (Leviathan et al. 2023; Chen et al.
2023) keeps the target model's exact output distribution when sampling, and greedy decoding's exact tokens when not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.models.span import SpanCache

Processors = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input ids, scores) -> scores


@dataclass
class Draft:
    """Proposed next tokens; ``probabilities[i]`` is the distribution ``tokens[i]`` was drawn from (None: chosen
    deterministically, a point mass, as n-gram lookup does)."""

    tokens: list[int]
    probabilities: torch.Tensor | None = None


class Drafter(Protocol):
    def propose(self, sequence: Sequence[int], limit: int, sample: bool, generator: torch.Generator | None) -> Draft:
        """At most ``limit`` tokens likely to follow ``sequence`` (prompt and accepted tokens so far)."""
        ...


class NgramDrafter:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last n tokens.

    Longer n-grams are tried first (a longer match predicts better); the index grows with the sequence, so a
    lookup costs the same at token 10 and at token 4000.
    """

    def __init__(self, max_ngram: int = 4, min_ngram: int = 2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min <= max, got {min_ngram} and {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._seen: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest occurrence ended
        self._indexed: list[int] = []  # the sequence the index was built from

    def propose(
        self, sequence: Sequence[int], limit: int, sample: bool = False, generator: torch.Generator | None = None
    ) -> Draft:
        self._index(sequence)
        for size in range(min(self.max_ngram, len(sequence) - 1), self.min_ngram - 1, -1):
            end = self._seen.get(tuple(sequence[-size:]))
            if end is not None:
                return Draft(list(sequence[end : end + limit]))
        return Draft([])

    def _index(self, sequence: Sequence[int]) -> None:
        """Index every n-gram that ends before the sequence's last token (the query is the one ending at it)."""
        if self._indexed != list(sequence[: len(self._indexed)]):  # not an extension: a new text
            self._seen.clear()
            self._indexed = []
        for end in range(max(len(self._indexed), 1), len(sequence)):
            for size in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._seen[tuple(sequence[end - size : end])] = end
        self._indexed = list(sequence)


class ModelDrafter:
    """A small local model (the engine's own in-process model, ``engine.client.local.LocalCausalLM``) that shares
    the target's tokenizer. It keeps its own attention cache and rolls it back to what the target accepted."""

    def __init__(self, model, processors: Processors | None = None):
        self.model, self.processors = model, processors
        self._cache: SpanCache | None = None
        self._tokens: list[int] = []  # tokens whose keys and values the cache holds
        self._logits: torch.Tensor | None = None  # after the last cached token

    def propose(self, sequence: Sequence[int], limit: int, sample: bool, generator: torch.Generator | None) -> Draft:
        if limit < 1:
            return Draft([])
        sequence = list(sequence)
        span = self.model.blocks.span
        if self._cache is None or self._cache.max_length < len(sequence) + limit:
            self._cache = span.new_cache(0, self.model.num_blocks, 1, 2 * (len(sequence) + limit))
            self._tokens = []
        common = _common_prefix(self._tokens, sequence)
        if common == len(sequence) and common == len(self._tokens) and self._logits is not None:
            logits = self._logits
        else:
            common = min(common, len(sequence) - 1)  # feed at least the last token: its logits are needed
            logits = self._feed(sequence[common:], common)
        tokens, rows = [], []
        for index in range(limit):
            scores = logits.float()
            if self.processors is not None:
                scores = self.processors(torch.tensor([sequence + tokens]), scores)
            if sample:
                probabilities = torch.softmax(scores, dim=-1)[0]
                token = int(torch.multinomial(probabilities, 1, generator=generator))
                rows.append(probabilities)
            else:
                token = int(scores.argmax(dim=-1))
            tokens.append(token)
            if index + 1 < limit:
                logits = self._feed([token], len(sequence) + index)
        return Draft(tokens, torch.stack(rows) if sample else None)

    def _feed(self, tokens: list[int], position: int) -> torch.Tensor:
        with torch.inference_mode():
            hidden = self.model.embed(torch.tensor([tokens]))
            output = self.model.blocks.span(hidden, position, self._cache)
            self._tokens = self._tokens[:position] + tokens
            self._logits = self.model.logits(output[:, -1])
        return self._logits


def load_draft_model(name: str, target_config) -> ModelDrafter:
    """A ``ModelDrafter`` over the model ``name`` (as ``resolve_model`` finds it), refused unless it shares the
    target's vocabulary (a draft token must mean the same text to both)."""
    from engine.client.local import LocalCausalLM
    from engine.weights import resolve_model

    source = resolve_model(name)
    if source.config.vocab_size != target_config.vocab_size:
        raise ValueError(
            f"draft model {name} has a vocabulary of {source.config.vocab_size} tokens, the model "
            f"{target_config.vocab_size}: a draft model must share the model's tokenizer"
        )
    return ModelDrafter(LocalCausalLM(source))


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def accept(
    scores: torch.Tensor,
    draft: Draft,
    sample: bool,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int]:
    """The tokens this step yields and how many of the draft's were accepted.

    ``scores`` (len(draft) + 1, vocab): the target's processed scores after the last accepted token and after each
    draft token. Greedy: draft tokens are kept while each is the target's argmax, then the target's own choice
    follows. Sampling: draft token x, drawn from q, is kept with probability min(1, p(x) / q(x)); at the first
    rejection a token is drawn from the residual max(0, p - q), renormalised; when all are kept, a last token is drawn
    from p. The result is distributed exactly as sampling from p token by token.
    """
    tokens: list[int] = []
    for index, proposed in enumerate(draft.tokens):
        row = scores[index]
        if not sample:
            choice = int(row.argmax())
            if choice != proposed:
                return tokens + [choice], index
            tokens.append(proposed)
            continue
        target = torch.softmax(row.float(), dim=-1)
        if draft.probabilities is None:  # a point mass on the proposed token
            keep = float(target[proposed])
            residual = target.clone()
            residual[proposed] = 0.0
        else:
            proposal = draft.probabilities[index].to(target.dtype)
            keep = min(1.0, float(target[proposed]) / max(float(proposal[proposed]), 1e-30))
            residual = (target - proposal).clamp(min=0.0)
        if float(torch.rand((), generator=generator)) < keep:
            tokens.append(proposed)
            continue
        if float(residual.sum()) <= 0.0:  # p and q agree everywhere but at this token: fall back to p
            residual = target
        return tokens + [int(torch.multinomial(residual / residual.sum(), 1, generator=generator))], index
    last = scores[len(draft.tokens)]
    if sample:
        bonus = int(torch.multinomial(torch.softmax(last.float(), dim=-1), 1, generator=generator))
    else:
        bonus = int(last.argmax())
    return tokens + [bonus], len(draft.tokens)


def processed_scores(
    processors: Processors, sequence: torch.Tensor, draft: Draft, logits: torch.Tensor
) -> torch.Tensor:
    """Each row of ``logits`` (len(draft) + 1, vocab) through the processors, with the draft tokens before it
    counted as generated (repetition and occurrence penalties see exactly what plain decoding would)."""
    rows = []
    for index in range(logits.shape[0]):
        context = torch.cat([sequence, torch.tensor([draft.tokens[:index]], dtype=sequence.dtype)], dim=1)
        rows.append(processors(context, logits[index : index + 1].float())[0])
    return torch.stack(rows)
