"""Speculative decoding: proposals, the acceptance rule, and the whole generation loop.

Greedy speculative decoding must give plain greedy decoding's tokens; sampled speculative decoding must keep the
model's exact output distribution (checked with a chi-square test over many seeded draws of a tiny model, whose
exact distribution is computed here). The loop runs on a local span (``LocalGenerationLM``, no swarm); the swarm
tests (with a server killed mid-generation) are in ``test_fault_tolerance.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
import torch
from test_generation import LocalGenerationLM

from engine.client.generation import GenerationSettings, generate
from engine.client.local import LocalCausalLM
from engine.client.speculative import Draft, ModelDrafter, NgramDrafter, accept
from engine.weights import resolve_model

PROMPT = [5, 9, 17, 33, 5, 9, 17, 40, 2, 5, 9]  # "5 9" was followed by 17 twice: a drafter proposes it


def test_ngram_lookup_proposes_what_followed_the_latest_match_and_prefers_longer_ones() -> None:
    drafter = NgramDrafter(max_ngram=3, min_ngram=2)
    assert drafter.propose([1, 2, 3, 4, 1, 2], 2).tokens == [3, 4]
    assert drafter.propose([1, 2, 3, 4, 1, 2, 3], 3).tokens == [4, 1, 2]  # the index grew with the sequence
    # "7 1 2" matches the later occurrence only with n = 2; with n = 3 the earlier one wins
    assert drafter.propose([7, 1, 2, 8, 1, 2, 9, 7, 1, 2], 1).tokens == [8]
    assert drafter.propose([6, 6, 4], 4).tokens == []  # no earlier occurrence: no proposal
    assert drafter.propose([4], 4).tokens == []
    with pytest.raises(ValueError, match="n-gram sizes"):
        NgramDrafter(max_ngram=1, min_ngram=2)


def test_greedy_acceptance_keeps_the_argmax_prefix_and_adds_the_models_own_token() -> None:
    scores = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 7, 1, 8]):
        scores[row, best] = 5.0
    assert accept(scores, Draft([3, 7, 1]), sample=False) == ([3, 7, 1, 8], 3)  # all kept, plus a bonus token
    assert accept(scores, Draft([3, 2, 1]), sample=False) == ([3, 7], 1)  # the first wrong one is replaced
    assert accept(scores[:1], Draft([]), sample=False) == ([3], 0)


@pytest.mark.parametrize("proposal", [None, "model"])
def test_sampled_acceptance_draws_exactly_from_the_target(proposal: str | None) -> None:
    """One position, 6 tokens: the token a step yields first is distributed as the target p, whatever q is."""
    generator = torch.Generator().manual_seed(0)
    target_logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    draft_probabilities = torch.softmax(torch.tensor([-1.0, 0.0, 3.0, 0.0, 1.0, 0.0]), dim=-1)
    counts: Counter[int] = Counter()
    draws = 8000
    for _ in range(draws):
        if proposal is None:
            draft = Draft([2])  # a fixed guess: a point mass on an unlikely-ish token
        else:
            token = int(torch.multinomial(draft_probabilities, 1, generator=generator))
            draft = Draft([token], draft_probabilities[None])
        tokens, _ = accept(torch.stack([target_logits, target_logits]), draft, sample=True, generator=generator)
        counts[tokens[0]] += 1
    assert_distribution(counts, dict(enumerate(torch.softmax(target_logits, -1).tolist())), draws)


def assert_distribution(counts: Counter, expected: dict, draws: int, min_p_value: float = 1e-3) -> None:
    """Pearson's chi-square test of ``counts`` against ``expected`` probabilities (rare outcomes pooled)."""
    observed, wanted, pooled_observed, pooled_wanted = [], [], 0, 0.0
    for outcome, probability in expected.items():
        if probability * draws >= 5:
            observed.append(counts.get(outcome, 0))
            wanted.append(probability * draws)
        else:
            pooled_observed += counts.get(outcome, 0)
            pooled_wanted += probability * draws
    assert sum(counts.values()) == draws and set(counts) <= set(expected), "an outcome the model cannot produce"
    if pooled_wanted > 0:
        observed.append(pooled_observed)
        wanted.append(pooled_wanted)
    statistic = sum((o - w) ** 2 / w for o, w in zip(observed, wanted, strict=True))
    freedom = len(observed) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(freedom / 2), torch.tensor(statistic / 2)))
    assert p_value > min_p_value, f"chi-square {statistic:.1f} with {freedom} degrees of freedom: p = {p_value:.2g}"


# --- the generation loop on a tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Thousands of tiny steps: one torch thread avoids thread hand-offs that cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalGenerationLM, LocalCausalLM]:
    """A tiny random Llama (vocab 128) and another one as a draft model sharing its vocabulary."""
    from conftest import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("speculative")
    target = make_tiny_checkpoint(root / "target", "llama", num_layers=2, seed=0)
    draft = make_tiny_checkpoint(root / "draft", "llama", num_layers=1, seed=1)
    return LocalGenerationLM(resolve_model(str(target))), LocalCausalLM(resolve_model(str(draft)))


def test_speculative_greedy_equals_plain_greedy(tiny) -> None:
    model, draft_model = tiny
    prompts = [PROMPT, list(range(20, 40)) + list(range(20, 30))]
    for prompt in prompts:
        plain = generate(model, prompt, GenerationSettings(max_new_tokens=32, draft_tokens=0), stop_token_ids=set())
        assert plain.steps == 32 and plain.drafted == 0
        for drafter, draft_tokens in ((None, 1), (None, 4), (ModelDrafter(draft_model), 5)):
            settings = GenerationSettings(max_new_tokens=32, draft_tokens=draft_tokens)
            fast = generate(model, prompt, settings, stop_token_ids=set(), drafter=drafter)
            assert fast.tokens == plain.tokens, (prompt, draft_tokens, drafter)
            assert fast.steps + fast.accepted == len(fast.tokens) and fast.drafted > 0
            if drafter is None and draft_tokens == 4:
                # a random model's greedy text soon repeats itself: n-gram lookup then proposes the repetition
                assert fast.accepted > 0 and fast.steps < plain.steps


def exact_joint(model: LocalGenerationLM, prompt: Sequence[int], settings: GenerationSettings) -> dict:
    """The exact distribution of the first two sampled tokens, token by token with the same processors."""
    processors = settings.processors(len(prompt))

    def probabilities(sequence: list[int]) -> torch.Tensor:
        ids = torch.tensor([sequence])
        with torch.inference_mode():
            hidden = model.blocks.span(model.embed(ids), 0, None)
            scores = processors(ids, model.logits(hidden[:, -1]).float())
        return torch.softmax(scores, dim=-1)[0]

    joint = {}
    first = probabilities(list(prompt))
    for token in torch.nonzero(first).flatten().tolist():
        second = probabilities([*prompt, token])
        for follower in torch.nonzero(second).flatten().tolist():
            joint[(token, follower)] = float(first[token] * second[follower])
    return joint


@pytest.mark.parametrize("drafter", ["ngram", "model"])
def test_speculative_sampling_keeps_the_models_distribution(tiny, drafter: str) -> None:
    model, draft_model = tiny
    settings = GenerationSettings(max_new_tokens=2, do_sample=True, temperature=0.7, top_k=6, draft_tokens=2)
    expected = exact_joint(model, PROMPT, settings)
    draws, counts, drafted = 1000, Counter(), 0
    for seed in range(draws):
        settings.seed = seed
        proposer = ModelDrafter(draft_model, settings.processors(len(PROMPT))) if drafter == "model" else None
        result = generate(model, PROMPT, settings, stop_token_ids=set(), drafter=proposer)
        counts[tuple(result.tokens)] += 1
        drafted += result.drafted
    assert drafted >= draws  # every generation checked a proposal in its first step
    assert_distribution(counts, expected, draws)


def test_draft_tokens_out_of_range_are_refused(tiny) -> None:
    model, _ = tiny
    with pytest.raises(ValueError, match="draft tokens must be between 0 and 32"):
        generate(model, PROMPT, GenerationSettings(draft_tokens=33))
