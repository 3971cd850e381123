"""A swarm client run as its own process inside a test's network namespace; prints one JSON line.

Not a test module. ``generate MODEL PEERS TOKENS N [PREFIX]``: greedy generation of N tokens after the
comma-separated prompt TOKENS (from servers under DHT prefix PREFIX, default the model's), with the route it took.
``view MODEL PEERS N``: the records of blocks 0..N-1.
``reachability MODEL PEERS``: what ``nectar bench`` reports about how peers reach this machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from engine.client.generation import GenerationSettings, generate
from engine.client.model import DistributedCausalLM
from engine.client.swarm import SwarmConnection
from engine.records import ServerState, default_dht_prefix


def main(argv: list[str]) -> None:
    command, model, peers = argv[0], argv[1], argv[2].split(",")
    if command == "generate":
        prompt, new_tokens = [int(token) for token in argv[3].split(",")], int(argv[4])
        client = DistributedCausalLM.connect(model, peers, argv[5] if len(argv) > 5 else None)
        try:
            _wait_covered(client.swarm, client.num_blocks)
            began = time.perf_counter()
            result = generate(client, prompt, GenerationSettings(max_new_tokens=new_tokens), stop_token_ids=set())
            seconds = time.perf_counter() - began
        finally:
            client.close()
        print(json.dumps({"tokens": result.tokens, "route": result.route, "seconds": seconds}), flush=True)
    elif command == "reachability":  # what `nectar bench` reports for this machine in a named swarm
        from agent.benchmark import _reachability
        from agent.settings import Settings

        settings = Settings()
        settings.swarm.name, settings.swarm.model, settings.swarm.initial_peers = "netns", model, peers
        reachability, why = asyncio.run(_reachability(settings, peers, None))
        print(json.dumps({"reachability": reachability, "detail": why}), flush=True)
    elif command == "view":
        with SwarmConnection(peers, default_dht_prefix(model)) as swarm:
            blocks = swarm.run(swarm.read_blocks(0, int(argv[3])), 60)
        print(json.dumps({index: [r.to_dict() for r in records] for index, records in blocks.items()}), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


def _wait_covered(swarm: SwarmConnection, num_blocks: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        blocks = swarm.run(swarm.read_blocks(0, num_blocks), 60)
        if all(any(item.state == ServerState.ONLINE for item in items) for items in blocks.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"blocks never all announced: {blocks}")
        time.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
