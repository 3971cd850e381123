"""Failover under fire: kill the server a generation is using, at a random moment, and check the output.

Starts the embedded model's swarm on 127.0.0.1: a DHT node, a server for blocks 0:15 and two for 15:30. A
no-failure greedy generation gives the reference tokens. Then each trial runs the same generation while a timer
thread SIGKILLs the server that the session uses for 15:30 at a random moment of the decoding; after the trial a
fresh server for 15:30 is started, so every trial begins with a replacement already in the DHT.

Prints each trial, then: generations completed with the reference tokens out of trials, and the stall after a
kill (the extra time of the step that hit the failure over the median step): median and worst.

    python benchmarks/failover.py [--trials 20] [--new-tokens 32] [--seed 0] [--batched-replay]

``--batched-replay`` replays a session's history in a few large steps (``ClientSettings.batched_replay``): faster
recovery, but the tokens are no longer guaranteed to match bit for bit, so mismatches are then reported, not fatal.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.local_swarm import LocalSwarm  # noqa: E402
from engine.client.config import ClientSettings  # noqa: E402
from engine.client.generation import chat_prompt  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."
SPANS = [(0, 15), (15, 30), (15, 30)]


@dataclass
class Run:
    tokens: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    recovered_at: list[int] = field(default_factory=list)  # steps during which a failed span was replaced


def greedy(model: DistributedCausalLM, input_ids: list[int], new_tokens: int, after_first=None) -> Run:
    """Greedy decoding step by step, timing each step; ``after_first(session)`` runs once the route is known."""
    run = Run()
    with torch.inference_mode(), model.inference_session(max_length=len(input_ids) + new_tokens) as session:
        step_input = torch.tensor([input_ids])
        for index in range(new_tokens):
            recoveries = session.recoveries
            began = time.perf_counter()
            hidden = session.step(model.embed(step_input))
            run.step_seconds.append(time.perf_counter() - began)
            if session.recoveries > recoveries:
                run.recovered_at.append(index)
            step_input = model.logits(hidden[:, -1]).argmax(dim=-1, keepdim=True)
            run.tokens.append(int(step_input))
            if index == 0 and after_first is not None:
                after_first(session)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batched-replay", action="store_true", help="replay history in large steps")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    source = resolve_model(DEFAULT_MODEL)  # convert once before the servers start
    input_ids = chat_prompt(source.tokenizer(), PROMPT)
    print(f"starting a local swarm of {DEFAULT_MODEL}: servers for blocks {SPANS}", file=sys.stderr, flush=True)
    with LocalSwarm(DEFAULT_MODEL, SPANS) as swarm:
        settings = ClientSettings(batched_replay=args.batched_replay)
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers, settings=settings)
        try:
            greedy(model, input_ids, 4)  # warm-up: connections, pings
            reference = greedy(model, input_ids, args.new_tokens)
            decode = sum(reference.step_seconds[1:])
            print(f"reference: {source.tokenizer().decode(reference.tokens)!r}")
            print(f"reference decode: {decode:.2f} s for {args.new_tokens - 1} steps", flush=True)
            correct, stalls, missed = 0, [], 0
            for trial in range(1, args.trials + 1):
                correct_now, stall, note = run_trial(model, swarm, input_ids, args.new_tokens, reference, decode, rng)
                correct += correct_now
                if stall is None:
                    missed += 1
                else:
                    stalls.append(stall)
                print(f"trial {trial:2d}: {note}", flush=True)
        finally:
            model.close()
    print(f"generations completed correctly: {correct}/{args.trials}")
    if stalls:
        print(
            f"stall after a kill: median {statistics.median(stalls):.3f} s, worst {max(stalls):.3f} s "
            f"(over {len(stalls)} kills that hit a running generation; {missed} landed after it ended)"
        )
    return 0 if correct == args.trials else 1


def run_trial(model, swarm: LocalSwarm, input_ids, new_tokens: int, reference: Run, decode: float, rng):
    """One generation with a kill at a random moment of its decoding; returns (correct, stall or None, note)."""
    delay = rng.uniform(0.0, 0.9 * decode)
    killed: list[int] = []

    def kill(session) -> None:
        hop = next(hop for hop in session.route if hop.start == 15)
        index = next(
            i for i, child in enumerate(swarm.servers) if child.ready and child.ready["peer_id"] == hop.peer_id
        )
        swarm.kill(index, signal.SIGKILL)
        killed.append(index)

    def arm(session) -> None:
        timer = threading.Timer(delay, kill, args=(session,))
        timer.daemon = True
        timer.start()

    try:
        run = greedy(model, input_ids, new_tokens, after_first=arm)
        correct = run.tokens == reference.tokens
    except Exception as error:  # a failed generation is a result to report, not a reason to stop the benchmark
        run, correct = None, False
        note = f"generation FAILED: {error}"
    time.sleep(max(0.0, delay - (sum(run.step_seconds[1:]) if run else 0.0)) + 0.05)  # the timer has fired
    stall = None
    if run is not None:
        if run.recovered_at:
            step = run.recovered_at[0]
            normal = statistics.median(s for i, s in enumerate(run.step_seconds) if i > 0 and i not in run.recovered_at)
            stall = run.step_seconds[step] - normal
            note = f"kill after {delay:.2f} s hit step {step}: stall {stall:.3f} s, "
        else:
            note = f"kill after {delay:.2f} s came after the generation ended, "
        note += "same tokens" if correct else "DIFFERENT tokens"
    for index in killed:  # bring the swarm back to one spare for 15:30 before the next trial
        swarm.servers[index].process.wait(timeout=30)
        swarm.add_server((15, 30))
    return correct, stall, note


if __name__ == "__main__":
    sys.exit(main())
