"""The OpenAI-compatible API of a real agent over a real local swarm (the embedded model, two servers on
127.0.0.1), through the official ``openai`` package and ``ChatClient``: greedy answers equal the engine's own
``generate`` for the same messages, streamed and not; two streams at once; a disconnect frees the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from agent_helpers import start_agent
from conftest import TEST_ENV
from swarm_helpers import call, wait_covered

from agent.chat.schema import NewMessage, Sampling
from agent.chat_client import ChatClient
from agent.local_swarm import LocalSwarm
from agent.service import Agent
from engine import wire
from engine.client.generation import GenerationSettings, generate, messages_prompt
from engine.client.model import DistributedCausalLM
from engine.weights import resolve_model

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Served:
    swarm: LocalSwarm
    agent: Agent
    reference: DistributedCausalLM  # the engine's own client, for the expected texts
    tokenizer: object
    token: str

    @property
    def base_url(self) -> str:
        return self.agent.api.url + "/v1"

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.token, max_retries=0, timeout=120)

    def expected(self, messages: list[dict[str, str]], max_tokens: int, **options) -> str:
        ids = messages_prompt(self.tokenizer, messages)
        settings = GenerationSettings(max_new_tokens=max_tokens, **options)
        return generate(self.reference, ids, settings, self.tokenizer).text

    def free_cache(self) -> list[int]:
        peers = [server.ready["peer_id"] for server in self.swarm.servers]
        return [
            call(self.reference.swarm, peer, wire.INFO_PROTOCOL, wire.request())[1]["free_cache_tokens"]
            for peer in peers
        ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    source = resolve_model(MODEL)  # converted once, before the servers start
    with LocalSwarm(MODEL, [(0, 15), (15, 30)], env=TEST_ENV) as swarm:
        reference = DistributedCausalLM.connect(MODEL, swarm.initial_peers)
        overrides = {
            "swarm.name": "test",
            "swarm.model": MODEL,
            "swarm.initial_peers": swarm.initial_peers,
            "chat.max_concurrent": 2,
            "chat.wait_seconds": 20,
        }
        agent = start_agent(tmp_path_factory.mktemp("agent"), overrides, lend=False)
        try:
            wait_covered(reference.swarm, reference.num_blocks)
            token = agent.paths.token_file.read_text().strip()
            yield Served(swarm, agent, reference, source.tokenizer(), token)
        finally:
            agent.close()
            reference.close()


def test_openai_package_lists_the_model_and_answers_like_the_engine(served: Served) -> None:
    client = served.openai()
    models = client.models.list().data
    assert [model.id for model in models] == [MODEL] and models[0].model_extra["ready"] is True
    expected = served.expected(QUESTION, 16)
    assert expected  # the embedded model says something

    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16)
    assert answer.choices[0].message.content == expected and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason in ("stop", "length")
    prompt_tokens = len(messages_prompt(served.tokenizer, QUESTION))
    assert answer.usage.prompt_tokens == prompt_tokens and 0 < answer.usage.completion_tokens <= 16
    extras = answer.model_extra["nectar"]
    assert [hop.split("@")[0] for hop in extras["route"]] == ["0:15", "15:30"]
    assert extras["time_to_first_token"] > 0 and extras["tokens_per_second"] >= 0

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_completion_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        answer.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert chunks[-1].model_extra["nectar"]["route"] == extras["route"]


def test_sampling_parameters_reach_the_engine(served: Served) -> None:
    client = served.openai()
    messages = [{"role": "system", "content": "Answer in French."}, *QUESTION]
    options = dict(do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.2, seed=7)
    expected = served.expected(messages, 12, **options)
    answer = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0.8,
        top_p=0.9,
        seed=7,
        extra_body={"repetition_penalty": 1.2},
    )
    assert answer.choices[0].message.content == expected
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, temperature=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    full = served.expected(QUESTION, 16)
    stop = full.split()[1]  # stop at the answer's second word
    stopped = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].message.content == full[: full.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    penalised = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, frequency_penalty=1.5, presence_penalty=0.5
    )
    assert penalised.choices[0].message.content == served.expected(
        QUESTION, 16, frequency_penalty=1.5, presence_penalty=0.5
    )


def test_text_completions(served: Served) -> None:
    client = served.openai()
    prompt = "The capital of France is"
    ids = list(served.tokenizer(prompt)["input_ids"])
    expected = generate(served.reference, ids, GenerationSettings(max_new_tokens=8), served.tokenizer).text
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert answer.choices[0].text == expected and answer.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected
    by_ids = client.completions.create(model="default", prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == expected


def test_two_concurrent_streams_each_get_their_own_answer(served: Served) -> None:
    questions = [QUESTION, [{"role": "user", "content": "Name three colours."}]]
    expected = [served.expected(question, 24) for question in questions]
    texts: list[str | None] = [None, None]

    def ask(index: int) -> None:
        with ChatClient.connect(served.agent.paths) as client:
            pieces = list(client.chat_stream(questions[index], model=MODEL, temperature=0, max_tokens=24))
        texts[index] = "".join(piece.text for piece in pieces)
        assert pieces[-1].meta is not None and pieces[-1].meta.completion_tokens > 0

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert texts == expected


def test_a_disconnect_mid_stream_frees_the_servers_sessions(served: Served) -> None:
    idle = served.free_cache()
    count = [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]
    with ChatClient.connect(served.agent.paths) as client:
        stream = client.chat_stream(count, model=MODEL, temperature=0, max_tokens=2000)
        for _ in range(3):
            next(stream)
        assert served.free_cache() < idle  # the session holds cache on both servers
        stream.close()  # the reader goes away: the agent ends the session before its next token
    deadline = time.monotonic() + 15
    while served.free_cache() != idle:
        assert time.monotonic() < deadline, f"cache still held: {served.free_cache()} != {idle}"
        time.sleep(0.2)
    assert served.agent.chat.warm.active == 0
    log = served.agent.paths.agent_log.read_text()
    assert "a chat answer stopped after" in log and "its reader went away" in log


def test_the_owner_is_never_throttled_while_chatting(served: Served) -> None:
    state = served.agent.state
    state.pause()
    try:
        answer = served.openai().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=4)
        assert answer.choices[0].message.content == served.expected(QUESTION, 4)
    finally:
        state.resume()


def test_refusals_in_openai_shape_and_the_agent_keeps_serving(served: Served, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    url = served.base_url + "/chat/completions"
    good = {"model": MODEL, "messages": QUESTION, "max_tokens": 2, "temperature": 0}
    assert httpx.post(url, json=good).status_code == 401
    assert httpx.post(url, json=good, headers={"Authorization": "Bearer nope"}).status_code == 401
    cases = [
        (b"{not json", 400, None),
        ({**good, "model": "gpt-9"}, 404, "model"),
        ({**good, "temperature": 3}, 400, "temperature"),
        ({**good, "max_tokens": 0}, 400, "max_tokens"),
        ({**good, "messages": []}, 400, "messages"),
        ({**good, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({**good, "n": 2}, 400, "n"),
        ({**good, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({**good, "logprobs": True}, 400, "logprobs"),
        (
            {**good, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
            "messages.0.content.0",
        ),
        ({**good, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ]
    for body, status, param in cases:
        send = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(url, headers=headers, timeout=30, **send)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
        if param is not None:
            assert error["param"] == param, error
    completions = httpx.post(
        served.base_url + "/completions", headers=headers, json={"model": MODEL, "prompt": "x", "echo": True}
    )
    assert completions.status_code == 400 and completions.json()["error"]["param"] == "echo"
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        served.openai().chat.completions.create(model="gpt-9", messages=QUESTION)
    assert httpx.post(url, json=good, headers=headers, timeout=60).status_code == 200  # still serving


def test_terminal_chat_streams_and_ctrl_c_stops_only_the_answer(served: Served) -> None:
    home = served.agent.paths.data_dir.parent  # the agent's paths are NECTAR_HOME's layout
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "chat", "--temperature", "0", "--max-tokens", "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **TEST_ENV, "NECTAR_HOME": str(home)},
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: child.stdout.read(1), "")), daemon=True)
    reader.start()

    def wait_for(text: str, after: int = 0, timeout: float = 90) -> int:
        deadline = time.monotonic() + timeout
        while (found := "".join(output).find(text, after)) < 0:
            assert child.poll() is None and time.monotonic() < deadline, "".join(output)
            time.sleep(0.05)
        return found + len(text)  # where the text ends: what arrived with it is still ahead of the mark

    try:
        expected = served.expected(QUESTION, 300)
        child.stdin.write(QUESTION[0]["content"] + "\n")
        child.stdin.flush()
        mark = wait_for(expected + "\n")
        mark = wait_for("you> ", mark)
        child.stdin.write("Count from 1 to 1000, separated by commas.\n")
        child.stdin.flush()
        mark = wait_for("nectar> ", mark)
        wait_for("123", mark)  # the count is streaming (the model writes it without separators)
        child.send_signal(signal.SIGINT)
        wait_for("[stopped]", mark)
        child.stdin.write("/quit\n")
        child.stdin.flush()
        assert child.wait(30) == 0, "".join(output)
    finally:
        if child.poll() is None:
            child.kill()
    with ChatClient.connect(served.agent.paths) as client:
        stored = client.get_conversation(client.list_conversations().conversations[0].id)
    turns = stored.path()
    assert [m.role for m in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1].content == expected and turns[1].meta.tokens_per_second is not None
    assert turns[3].meta.finish_reason == "cancelled" and turns[3].content.startswith("123")
    assert stored.sampling.temperature == 0 and stored.sampling.max_tokens == 300


def test_conversation_replies_are_stored_and_regenerations_are_siblings(served: Served) -> None:
    expected = served.expected(QUESTION, 16)
    with ChatClient.connect(served.agent.paths) as client:
        conversation = client.create_conversation(
            sampling=Sampling(temperature=0, max_tokens=16), messages=[NewMessage(**QUESTION[0])]
        )
        reply = client.reply(conversation.id)
        assert "".join(delta.text for delta in reply) == expected
        assert reply.message is not None and reply.message.content == expected
        assert reply.message.meta.route and reply.message.meta.completion_tokens > 0
        assert reply.message.meta.sampling.temperature == 0

        question = conversation.messages[0]
        again = client.reply(conversation.id, parent_id=question.id)  # regenerate, then stop it
        next(iter(again))
        again.stop()
        stored = client.get_conversation(conversation.id)
    assert again.message is not None and again.message.meta.finish_reason == "cancelled"
    assert expected.startswith(again.message.content) and again.message.content
    assert [m.id for m in stored.siblings(reply.message.id)] == [reply.message.id, again.message.id]
    assert stored.current_id == again.message.id
