"""A bfloat16 swarm on CPU: generation and a fine-tuning step agree with transformers running the model in bfloat16.

Two ``nectar serve --dtype bfloat16`` processes hold a tiny Llama (weights scaled up so tokens are decided with
clear margins). Hidden states travel between them in bfloat16 (half the bytes of float32). The client keeps the
embeddings, final norm and head in float32, so agreement is within bfloat16 rounding, not bit for bit:

- transformers runs the head in bfloat16 too; the client's float32 head rounds less;
- the servers attend over a preallocated cache with an explicit mask where transformers passes ``is_causal``, so
  SDPA may pick another kernel and round the softmax differently;
- with 8 significant bits, those differences stay at the 1e-2 relative level over 4 blocks, far below the margins
  between the tokens this model chooses, so the generated tokens are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TEST_ENV
from reference import greedy_reference, make_lively_checkpoint
from swarm_helpers import wait_covered

from agent.local_swarm import LocalSwarm
from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM
from engine.client.ptune import PromptTuning, causal_lm_loss

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 42, 99, 3, 64, 7, 100]
NEW_TOKENS = 16
IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 7], [8, 2, 77, 13, 120, 6, 1]])
BF16_RTOL = 3e-2  # relative to the tensor's largest magnitude: a few bfloat16 roundings (2**-8 each) compounded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_checkpoint(tmp_path_factory.mktemp("bf16") / "llama", "llama")


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[DistributedCausalLM]:
    with LocalSwarm(str(checkpoint), [(0, 2), (2, 4)], ["--dtype", "bfloat16"], env=TEST_ENV) as swarm:
        assert all(child.ready["dtype"] == "bfloat16" for child in swarm.servers)
        model = DistributedCausalLM.connect(str(checkpoint), swarm.initial_peers)
        try:
            wait_covered(model.swarm, model.num_blocks)
            yield model
        finally:
            model.close()


def reference_model(checkpoint: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).eval().requires_grad_(False)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def test_generation_agrees_with_transformers_in_bfloat16(client: DistributedCausalLM, checkpoint: Path) -> None:
    reference = reference_model(checkpoint, torch.bfloat16)
    result = generate(client, PROMPT, GenerationSettings(max_new_tokens=NEW_TOKENS), stop_token_ids=set())
    assert result.tokens == greedy_reference(reference, PROMPT, NEW_TOKENS)
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        expected = reference.model(ids).last_hidden_state  # after the final norm
        with client.inference_session(max_length=len(PROMPT)) as session:
            hidden = session.step(client.embed(ids))
        error = relative_error(client.norm(hidden), expected)
        exact = reference_model(checkpoint, torch.float32).model(ids).last_hidden_state
    print(f"bfloat16 swarm vs transformers bfloat16: {NEW_TOKENS}/{NEW_TOKENS} tokens equal; final hidden states "
          f"differ by {error:.2e} of their scale (bfloat16 vs float32 transformers: "
          f"{relative_error(expected, exact):.2e})")  # fmt: skip
    assert error < BF16_RTOL


def test_fine_tuning_step_agrees_with_transformers_in_bfloat16(client: DistributedCausalLM, checkpoint: Path) -> None:
    reference = reference_model(checkpoint, torch.bfloat16)
    tuning = PromptTuning(client, prefix_length=3, seed=1)
    loss = tuning.loss(IDS, IDS)
    loss.backward()
    prefix = tuning.prefix.detach().to(torch.bfloat16).requires_grad_(True)
    embeds = reference.model.embed_tokens(IDS)
    inputs = torch.cat([prefix.expand(IDS.shape[0], -1, -1), embeds], dim=1)
    expected = causal_lm_loss(reference(inputs_embeds=inputs).logits[:, 3:], IDS)
    expected.backward()
    grad_error = relative_error(tuning.prefix.grad, prefix.grad)
    print(f"bfloat16 fine-tuning step: loss {loss.item():.4f} vs transformers {expected.item():.4f}, "
          f"prefix gradient differs by {grad_error:.2e} of its scale")  # fmt: skip
    assert abs(loss.item() - expected.item()) < BF16_RTOL * abs(expected.item())
    assert grad_error < 2 * BF16_RTOL  # a gradient rounds through twice as many bfloat16 operations
    optimizer = torch.optim.SGD(tuning.trainable_parameters(), lr=1e-2)
    optimizer.step()
    with torch.no_grad():
        assert tuning.loss(IDS, IDS).item() < loss.item()  # the step went downhill through bfloat16 servers
