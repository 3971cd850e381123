"""The chat API's cost: the embedded model through the agent's OpenAI-compatible API vs the engine client directly.

One run starts a local swarm (a DHT node and 2 servers), an agent in its own process (API only, pointed at that
swarm, as a running agent's chat is), and an engine client in this process. Each repeat generates the same
greedy answer both ways, alternating, so both see the same machine load:

- direct: ``engine.client.generation.generate`` with streaming (time to first token; tokens/s after it);
- API: the official ``openai`` package streaming ``/v1/chat/completions``, timed at the client: time to the
  first text chunk and tokens/s between the first and the last chunk (usage gives the token count).

Prints medians and the API's overhead on tokens/s and time to first token (target: under 5% on tokens/s).

    python benchmarks/chat_api.py [--repeats 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.api.server import ApiAddress  # noqa: E402
from agent.local_swarm import LocalSwarm, even_spans  # noqa: E402
from agent.paths import AgentPaths  # noqa: E402
from engine.client.generation import GenerationSettings, generate, messages_prompt  # noqa: E402
from engine.client.model import DistributedCausalLM  # noqa: E402
from engine.weights import DEFAULT_MODEL, resolve_model  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def serve_agent(home: str, peers: list[str]) -> None:
    """The child process: an agent with its API only (no lending), chatting through the given swarm."""
    from agent.service import Agent

    overrides = {"api.port": 0, "swarm.name": "bench", "swarm.model": DEFAULT_MODEL, "swarm.initial_peers": peers}
    agent = Agent(AgentPaths.default(), overrides, log_to_stderr=False, lend=False).start()
    try:
        agent.run()
    finally:
        agent.close()


def start_agent_process(home: Path, peers: list[str]) -> tuple[subprocess.Popen, ApiAddress, str]:
    env = {**os.environ, "NECTAR_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, __file__, "--serve-agent", *peers], env=env)
    paths = AgentPaths(home / "config", home / "data", home / "cache", home / "logs")
    deadline = time.monotonic() + 120
    while (address := ApiAddress.read(paths.api_file)) is None:
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the agent did not start")
        time.sleep(0.2)
    return child, address, paths.token_file.read_text().strip()


def direct(model: DistributedCausalLM, tokenizer, ids: list[int], new_tokens: int) -> tuple[float, float, int]:
    result = generate(model, ids, GenerationSettings(max_new_tokens=new_tokens), tokenizer, on_text=lambda _: None)
    return result.time_to_first_token, result.tokens_per_second, len(result.tokens)


def through_api(client, new_tokens: int) -> tuple[float, float, int]:
    began = time.perf_counter()
    first = last = 0.0
    tokens = 0
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=new_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    # text chunks are tokens whose text could be shown; the count between first and last is usage's, less one
    return first - began, (tokens - 1) / (last - first) if last > first else 0.0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--serve-agent", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agent:
        serve_agent(os.environ["NECTAR_HOME"], args.serve_agent)
        return
    import openai

    source = resolve_model(DEFAULT_MODEL)
    tokenizer = source.tokenizer()
    ids = messages_prompt(tokenizer, MESSAGES)
    spans = even_spans(source.config.num_hidden_layers, 2)
    with tempfile.TemporaryDirectory() as home, LocalSwarm(DEFAULT_MODEL, spans) as swarm:
        model = DistributedCausalLM.connect(DEFAULT_MODEL, swarm.initial_peers)
        agent, address, token = start_agent_process(Path(home), swarm.initial_peers)
        try:
            client = openai.OpenAI(base_url=address.url + "/v1", api_key=token, max_retries=0, timeout=300)
            direct(model, tokenizer, ids, 4)  # warm-ups: routes, pings, the agent's model load
            through_api(client, 4)
            rows: dict[str, list[tuple[float, float, int]]] = {"direct": [], "API": []}
            for _ in range(args.repeats):
                rows["direct"].append(direct(model, tokenizer, ids, args.new_tokens))
                rows["API"].append(through_api(client, args.new_tokens))
        finally:
            agent.terminate()
            agent.wait(30)
            model.close()
    print(f"model {DEFAULT_MODEL}, 2 servers, prompt {len(ids)} tokens, up to {args.new_tokens} new tokens, greedy")
    print(f"median of {args.repeats}, alternating\n\n{'path':<8} {'tokens':>6} {'TTFT s':>8} {'tokens/s':>9}")
    medians = {}
    for name, samples in rows.items():
        ttft = statistics.median(sample[0] for sample in samples)
        speed = statistics.median(sample[1] for sample in samples)
        medians[name] = (ttft, speed)
        print(f"{name:<8} {samples[-1][2]:>6} {ttft:>8.3f} {speed:>9.2f}")
    (direct_ttft, direct_speed), (api_ttft, api_speed) = medians["direct"], medians["API"]
    print(
        f"\nAPI overhead: tokens/s {1 - api_speed / direct_speed:+.1%} (lower through the API when positive), "
        f"time to first token {api_ttft - direct_ttft:+.3f} s ({api_ttft / direct_ttft - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
