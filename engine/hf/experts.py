"""Mixture-of-experts checkpoint layout: the per-expert tensors checkpoints store, fused the way the layers hold them.

Depends on transformers 5's Mixtral layer keeping its experts as two 3-D parameters, ``mlp.experts.gate_up_proj``
(experts, 2 * intermediate, hidden: each expert's ``w1`` then ``w3``) and ``mlp.experts.down_proj`` (experts,
hidden, intermediate: each expert's ``w2``), with the router at ``mlp.gate.weight``; while checkpoints (those on the
Hub, and those transformers itself saves) keep the older layout ``block_sparse_moe.experts.N.w1/w2/w3.weight`` and
``block_sparse_moe.gate.weight``. transformers fuses them on load (its ``conversion_mapping`` entry "mixtral");
reading one block ourselves, we do the same fusion here. A block already in the fused layout passes unchanged.
"""

from __future__ import annotations

import re

import torch

_LEGACY = "block_sparse_moe."
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(w[123])\.weight$")


def fuse_mixtral_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One block's tensors (names relative to the block) in the layout ``MixtralDecoderLayer`` loads."""
    renamed = {name.replace(_LEGACY, "mlp.", 1) if name.startswith(_LEGACY) else name: t for name, t in state.items()}
    experts: dict[int, dict[str, torch.Tensor]] = {}
    fused: dict[str, torch.Tensor] = {}
    for name, tensor in renamed.items():
        match = _EXPERT.match(name)
        if match is None:
            fused[name] = tensor
        else:
            experts.setdefault(int(match[1]), {})[match[2]] = tensor
    if experts:
        order = sorted(experts)
        if order != list(range(len(order))) or any(set(experts[i]) != {"w1", "w2", "w3"} for i in order):
            raise ValueError("the checkpoint's expert tensors are incomplete: each expert needs w1, w2 and w3")
        fused["mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([experts[i]["w1"], experts[i]["w3"]]) for i in order]
        )
        fused["mlp.experts.down_proj"] = torch.stack([experts[i]["w2"] for i in order])
    return fused
