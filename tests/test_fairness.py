"""Training makes progress on a real server while inference keeps its queue full the whole time.

The server (a real ``nectar serve``) has the test-only ``slow-compute`` fault, so each compute job takes a second
and three inference streams stepping without pause always leave jobs waiting. With strict priority a forward
would wait until every stream stopped; with aging (``--training-max-wait``) it is answered while the streams
still get their steps answered, before and after it.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import TEST_ENV
from swarm_helpers import RawStream, forward, wait_covered

from agent.local_swarm import LocalSwarm
from engine.client.swarm import SwarmConnection
from engine.records import default_dht_prefix
from engine.server.faults import FAULT_VARIABLE

pytestmark = pytest.mark.slow

HIDDEN = 64
STREAMS = 3
STEPS = 6  # per stream: about 18 s of inference work queued back to back


def test_training_progresses_while_inference_runs_continuously(tiny_checkpoints) -> None:
    path = tiny_checkpoints("llama")
    env = {**TEST_ENV, FAULT_VARIABLE: "slow-compute"}
    with (
        LocalSwarm(str(path), [(0, 4)], ["--training-max-wait", "0.5"], env=env) as swarm,
        SwarmConnection(swarm.initial_peers, default_dht_prefix(str(path))) as client,
    ):
        wait_covered(client, 4)
        peer = swarm.servers[0].ready["peer_id"]
        answered: list[float] = []  # when each inference step was answered
        lock = threading.Lock()

        def chat() -> None:
            with RawStream(client, peer) as stream:
                stream.open(start=0, end=4, max_length=STEPS)
                for position in range(STEPS):
                    stream.step(torch.zeros(1, 1, HIDDEN), position)
                    with lock:
                        answered.append(time.monotonic())

        chats = [threading.Thread(target=chat) for _ in range(STREAMS)]
        for thread in chats:
            thread.start()
        while len(answered) < 2:  # inference is under way and its queue is full
            time.sleep(0.1)
        output = forward(client, peer, torch.zeros(1, 2, HIDDEN), 0, 4)
        trained_at = time.monotonic()
        for thread in chats:
            thread.join()
    assert output.shape == (1, 2, HIDDEN)
    later = [moment for moment in answered if moment > trained_at]
    # the forward did not wait for inference to stop: steps were still being answered after it, and most of them
    assert len(answered) == STREAMS * STEPS and len(later) >= STREAMS * STEPS // 2, (len(later), len(answered))
