"""What a server accepts of a step's push list and of a pushed step (fast: in process, no transport)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from engine import wire
from engine.server.handler import BlockServicer, _push_targets, _push_timeout
from engine.wire import BadRequest


def test_push_lists_and_timeouts_are_checked() -> None:
    target = {"peer": "12D3KooWexample", "key": "k" * 32}
    assert _push_targets(None) == [] and _push_targets([target]) == [target]
    for bad in ("peer", [{"peer": "x"}], [{"peer": "", "key": "k"}], [target] * 65):
        with pytest.raises(BadRequest, match="push"):
            _push_targets(bad)
    assert _push_timeout(None) == 10.0 and _push_timeout(0.5) == 0.5 and _push_timeout(99) == 10.0
    with pytest.raises(BadRequest, match="push timeout must be a positive number of seconds, got -1"):
        _push_timeout(-1)


def test_a_push_for_no_open_session_is_refused_and_one_for_an_open_session_is_queued() -> None:
    servicer = BlockServicer(backend=None, executor=None, describe=dict)  # type: ignore[arg-type]

    async def push(key: str):
        request = wire.request([torch.zeros(1, 1, 4)], key=key, position=0, step=1)
        return wire.unpack(await servicer.rpc_push(request, None))[1]  # type: ignore[arg-type]

    async def scenario():
        assert "no open session" in (await push("unknown-key-0123456789"))["error"]
        inbox: asyncio.Queue = asyncio.Queue(maxsize=1)
        servicer._push_inboxes["open-key-0123456789"] = inbox
        assert "error" not in await push("open-key-0123456789")
        kind, (tensors, meta) = inbox.get_nowait()
        assert kind == "push" and meta["step"] == 1 and tensors[0].shape == (1, 1, 4)
        inbox.put_nowait(("client", None))  # full: the pusher is told to let the client send the step
        assert "client sends this one itself" in (await push("open-key-0123456789"))["error"]

    asyncio.run(scenario())
