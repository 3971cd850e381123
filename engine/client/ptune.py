"""Parameter-efficient fine-tuning through the swarm: the model stays frozen, the trained parameters stay here.

- ``PromptTuning``: trainable prefix embeddings put in front of every sequence (Lester et al., 2021).
- ``DeepPromptTuning``: the same prefix, plus trainable prompts added to the prefix positions at the input of
  every block (P-Tuning v2); servers take them as an input of forward and backward and return their gradients.
- ``SequenceClassifier``: a trainable linear head on the last token's final hidden state, over either of them.

Every module works on a ``DistributedCausalLM`` (or anything with its ``embed``, ``blocks``, ``logits``), so
the loss's backward pass runs through the servers. A tuned module also generates: it offers the model's
``embed``/``logits``/``inference_session``, with a session that feeds the prefix (and deep prompts) first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label of tokens the loss skips (prompt and padding), as in torch's cross_entropy


class PromptTuning(nn.Module):
    """Trainable prefix embeddings (prefix_length, hidden) before the input; logits and loss cover the input only.

    The prefix starts as the embeddings of random vocabulary tokens (seeded): text-like vectors train faster and
    more stably than noise. ``adapter`` names a LoRA adapter the servers apply under the prompts (None: base).
    """

    method = "ptune"

    def __init__(self, model, prefix_length: int, adapter: str | None = None, seed: int = 0):
        super().__init__()
        if prefix_length < 1:
            raise ValueError(f"prefix length must be at least 1, got {prefix_length}")
        self.model = model
        self.adapter = adapter
        self.prefix_length = prefix_length
        self.model.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        token_ids = torch.randint(0, model.config.vocab_size, (prefix_length,), generator=generator)
        with torch.no_grad():
            self.prefix = nn.Parameter(model.embed(token_ids).detach().float().clone())

    @property
    def config(self):
        return self.model.config

    @property
    def num_blocks(self) -> int:
        return self.model.num_blocks

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The trained parameters by name (what gets saved), without the frozen model."""
        return {name: tensor.detach() for name, tensor in self.named_parameters() if not name.startswith("model.")}

    def load_trained_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved tensors (as ``trained_tensors`` names them) into the parameters; shapes must match."""
        _copy_into(dict(self.named_parameters()), tensors)

    def deep_prompts(self, batch_size: int) -> torch.Tensor | None:
        """Prompts (blocks, batch, prefix, hidden) the servers add at every block; none for plain prompt tuning."""
        return None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden)

    def hidden_states(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (batch, tokens, hidden) of the input tokens, the prefix removed.

        ``inputs_embeds`` replaces the embeddings of ``input_ids`` (soft inputs; their gradients come back too).
        """
        embeds = self.model.embed(input_ids) if inputs_embeds is None else inputs_embeds
        prefix = self.prefix.to(embeds.dtype).expand(embeds.shape[0], -1, -1)
        inputs = torch.cat([prefix, embeds], dim=1)
        hidden = self.model.blocks(inputs, self.deep_prompts(embeds.shape[0]), adapter=self.adapter)
        return hidden[:, self.prefix_length :]

    def forward(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, tokens, vocab) of the input tokens, with gradients through the swarm."""
        return self.model.logits(self.hidden_states(input_ids, inputs_embeds))

    def loss(
        self, input_ids: torch.Tensor | None, labels: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token cross entropy over tokens whose label is not ``IGNORE_INDEX`` (labels align with inputs)."""
        return causal_lm_loss(self(input_ids, inputs_embeds), labels)

    def inference_session(
        self, max_length: int, batch_size: int = 1, adapter: str | None = None, **kwargs
    ) -> TunedSession:
        """A generation session that sends the prefix (and deep prompts) before the first tokens.

        The adapter is the one the prompts were trained with unless ``adapter`` names another.
        """
        session = self.model.inference_session(
            max_length + self.prefix_length,
            batch_size,
            adapter=adapter if adapter is not None else self.adapter,
            prompts=self._session_prompts(batch_size),
            **kwargs,
        )
        return TunedSession(session, self.prefix.detach(), self.prefix_length)

    def _session_prompts(self, batch_size: int) -> torch.Tensor | None:
        prompts = self.deep_prompts(batch_size)
        return None if prompts is None else prompts.detach()


class DeepPromptTuning(PromptTuning):
    """Prompt tuning plus trainable prompts (blocks, prefix, hidden) added to the prefix at every block's input.

    The deep prompts start at zero, so training starts from the plain prefix and moves every layer's view of it.
    """

    method = "deep_ptune"

    def __init__(self, model, prefix_length: int, adapter: str | None = None, seed: int = 0):
        super().__init__(model, prefix_length, adapter, seed)
        self.deep = nn.Parameter(torch.zeros(model.num_blocks, prefix_length, model.config.hidden_size))

    def deep_prompts(self, batch_size: int) -> torch.Tensor:
        return self.deep.unsqueeze(1).expand(-1, batch_size, -1, -1)


class TunedSession:
    """An inference session whose first step carries the trained prefix; positions and outputs exclude it."""

    def __init__(self, session, prefix: torch.Tensor, prefix_length: int):
        self.session, self.prefix, self.prefix_length = session, prefix, prefix_length
        self.started = False

    @property
    def route(self):
        return self.session.route

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.started:
            return self.session.step(hidden)
        prefix = self.prefix.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        output = self.session.step(torch.cat([prefix, hidden], dim=1))
        self.started = True
        return output[:, self.prefix_length :]

    @property
    def position(self) -> int:
        return self.session.position - self.prefix_length

    def rollback(self, length: int) -> None:
        self.session.rollback(length + self.prefix_length)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> TunedSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SequenceClassifier(nn.Module):
    """A trainable linear head over the final (normed) hidden state of each sequence's last token.

    Wraps a ``PromptTuning`` or ``DeepPromptTuning`` (their prompts train along with the head). Sequences are
    right-padded; ``lengths`` says where each ends. Causal attention keeps padding from changing earlier tokens,
    so no attention mask is needed.
    """

    def __init__(self, tuning: PromptTuning, num_labels: int, seed: int = 0):
        super().__init__()
        if num_labels < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.tuning = tuning
        self.num_labels = num_labels
        self.head = nn.Linear(tuning.config.hidden_size, num_labels)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.normal_(0.0, tuning.config.hidden_size**-0.5, generator=generator)
            self.head.bias.zero_()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        head = {f"head.{name}": tensor.detach() for name, tensor in self.head.named_parameters()}
        return {**self.tuning.trained_tensors(), **head}

    def load_trained_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tuning.load_trained_tensors({name: t for name, t in tensors.items() if not name.startswith("head.")})
        head = {name.removeprefix("head."): t for name, t in tensors.items() if name.startswith("head.")}
        _copy_into(dict(self.head.named_parameters()), head)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (batch, num_labels)."""
        hidden = self.tuning.hidden_states(input_ids)
        if lengths is None:
            lengths = torch.full((input_ids.shape[0],), input_ids.shape[1])
        last = hidden[torch.arange(hidden.shape[0]), lengths.to(torch.long) - 1]
        return self.head(self.tuning.model.norm(last).to(self.head.weight.dtype))

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(self(input_ids, lengths), labels)


def _copy_into(parameters: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in tensors.items():
            if name not in parameters or parameters[name].shape != tensor.shape:
                raise ValueError(f"trained tensor {name} {tuple(tensor.shape)} does not fit this module")
            parameters[name].copy_(tensor)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of predicting token t+1 at position t, skipping ``IGNORE_INDEX`` labels."""
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
