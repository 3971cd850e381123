"""Mixtral: the Llama layout with a mixture-of-experts MLP (a router picks two of eight experts per token).

Attention, positions and masks are the Llama family's; only the block's tensors differ: checkpoints store each
expert's three matrices separately, while transformers' layer holds them fused (see ``engine.hf.experts``).
Experts are 3-D parameters rather than linear layers, so quantization leaves them in the serving dtype.
"""

from __future__ import annotations

import torch

from engine.hf.experts import fuse_mixtral_experts
from engine.models.base import ModelFamily


class MixtralFamily(ModelFamily):
    def block_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return fuse_mixtral_experts(state)


MIXTRAL = MixtralFamily("mixtral", ("mixtral",), "transformers.models.mixtral.modeling_mixtral", "Mixtral")
