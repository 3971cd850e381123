"""``wire.pack_tensor`` / ``unpack_tensor``: the same bytes as hivemind's serializer, which peers may use, and back
(fast)."""

from __future__ import annotations

import pytest
import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor

from engine import wire

CASES = [
    torch.randn(1, 1, 576),
    torch.randn(2, 3, 8).half(),
    torch.randn(2, 3, 8).bfloat16(),  # through hivemind
    torch.arange(12).reshape(3, 4),
    torch.zeros(0, 5),
    torch.tensor(3.0),
    torch.randn(4, 6)[:, ::2],  # not contiguous
]


@pytest.mark.parametrize("tensor", CASES, ids=lambda tensor: f"{tensor.dtype}-{tuple(tensor.shape)}")
def test_tensors_pack_as_hivemind_does_and_come_back_equal(tensor: torch.Tensor) -> None:
    packed = wire.pack_tensor(tensor)
    assert packed.SerializeToString() == serialize_torch_tensor(tensor.contiguous()).SerializeToString()
    for restored in (wire.unpack_tensor(packed), deserialize_torch_tensor(packed)):
        assert restored.dtype == tensor.dtype and torch.equal(restored, tensor)


def test_a_tensor_whose_bytes_do_not_fit_its_shape_is_a_bad_request() -> None:
    packed = wire.pack_tensor(torch.randn(2, 3))
    packed.size[:] = [4, 3]
    with pytest.raises(wire.BadRequest, match="malformed message"):
        wire.unpack(wire.runtime_pb2.ExpertRequest(tensors=[packed]))
