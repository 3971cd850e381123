"""Stored conversations through a real agent's API and ``ChatClient``: the round trip, branches, search, export,
and refusals in OpenAI's error shape. No swarm is needed: nothing here generates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_helpers import start_agent

from agent.chat.schema import MessageMeta, NewConversation, NewMessage, Sampling
from agent.chat.store import ConversationStore
from agent.chat_client import ChatClient
from agent.client import AgentApiError, AgentClientError
from agent.service import Agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = start_agent(tmp_path, lend=False)
    yield running
    running.close()


@pytest.fixture
def client(agent: Agent) -> Iterator[ChatClient]:
    with ChatClient.connect(agent.paths) as connected:
        yield connected


def test_conversation_round_trip(agent: Agent, client: ChatClient) -> None:
    created = client.create_conversation(system_prompt="Be brief.", sampling=Sampling(temperature=0, max_tokens=32))
    assert created.title == "" and created.messages == [] and created.current_id is None
    question = client.append_message(created.id, "user", "Why is the sky blue?\nAnd why are sunsets red?")
    meta = MessageMeta(model="m", route=["0:15@abc", "15:30@def"], completion_tokens=5, tokens_per_second=12.5)
    answer = client.append_message(created.id, "assistant", "Rayleigh scattering.", meta=meta)
    assert answer.parent_id == question.id and answer.meta.route == ["0:15@abc", "15:30@def"]

    listed = client.list_conversations()
    assert listed.total == 1 and listed.conversations[0].title == "Why is the sky blue?"
    assert listed.conversations[0].message_count == 2

    stored = client.get_conversation(created.id)
    assert stored.current_id == answer.id and stored.system_prompt == "Be brief."
    assert stored.sampling.temperature == 0 and stored.sampling.max_tokens == 32
    assert stored.chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?\nAnd why are sunsets red?"},
        {"role": "assistant", "content": "Rayleigh scattering."},
    ]

    renamed = client.rename_conversation(created.id, "Sky colours")
    assert renamed.title == "Sky colours" and client.list_conversations().conversations[0].title == "Sky colours"

    hits = client.search_conversations("RAYLEIGH").hits
    assert [(hit.conversation_id, hit.message_id, hit.role) for hit in hits] == [(created.id, answer.id, "assistant")]
    assert "Rayleigh scattering" in hits[0].snippet
    assert [hit.message_id for hit in client.search_conversations("colours").hits] == [None]  # the title
    assert client.search_conversations("100%").hits == []  # LIKE wildcards are literal

    markdown = client.export_conversation(created.id, "markdown")
    assert markdown.startswith("# Sky colours\n") and "## System\n\nBe brief." in markdown
    assert markdown.index("## User") < markdown.index("## Assistant\n\nRayleigh scattering.")
    assert "12.5 tokens/s" in markdown
    exported = json.loads(client.export_conversation(created.id, "json"))
    assert exported["nectar_export"] == 1 and exported["current_path"] == [question.id, answer.id]
    assert exported["messages"][1]["meta"]["route"] == ["0:15@abc", "15:30@def"]

    assert client.delete_conversation(created.id).deleted == 1
    assert client.list_conversations().total == 0
    with pytest.raises(AgentApiError, match=f"no conversation {created.id}") as missing:
        client.get_conversation(created.id)
    assert missing.value.status_code == 404


def test_regenerate_and_edit_keep_earlier_answers_as_siblings(client: ChatClient) -> None:
    conversation = client.create_conversation(
        messages=[NewMessage(role="user", content="Hi"), NewMessage(role="assistant", content="Hello!")]
    )
    first_question, first_answer = conversation.path()
    again = client.append_message(conversation.id, "assistant", "Hi there!", parent_id=first_question.id)
    edited = client.append_message(conversation.id, "user", "Hello", parent_id=None)
    reply = client.append_message(conversation.id, "assistant", "Hey.")
    stored = client.get_conversation(conversation.id)
    assert [m.content for m in stored.path()] == ["Hello", "Hey."] and stored.current_id == reply.id
    assert [m.id for m in stored.siblings(again.id)] == [first_answer.id, again.id]
    assert [m.id for m in stored.siblings(edited.id)] == [first_question.id, edited.id]
    shown = client.change_conversation(conversation.id, current_id=first_answer.id)
    assert [m.content for m in shown.path()] == ["Hi", "Hello!"]

    # deleting a message removes its replies; the current leaf moves up when it was among them
    assert client.delete_message(conversation.id, first_question.id).deleted == 3
    after = client.get_conversation(conversation.id)
    assert [m.content for m in after.messages] == ["Hello", "Hey."] and after.current_id is None
    assert client.change_conversation(conversation.id, current_id=reply.id).path()[-1].content == "Hey."


def test_refusals_are_one_line_openai_errors(agent: Agent, client: ChatClient) -> None:
    other = client.create_conversation(messages=[NewMessage(role="user", content="elsewhere")])
    conversation = client.create_conversation()
    with pytest.raises(AgentApiError, match="parent_id: conversation .* has no message") as wrong_parent:
        client.append_message(conversation.id, "user", "x", parent_id=other.messages[0].id)
    assert wrong_parent.value.status_code == 404
    with pytest.raises(AgentClientError, match="role"):
        client.append_message(conversation.id, "robot", "x")  # type: ignore[arg-type]
    with pytest.raises(AgentClientError, match="temperature"):
        client.change_conversation(conversation.id, sampling=Sampling.model_construct(temperature=9))

    token = agent.paths.token_file.read_text().strip()
    url = agent.api.url + f"/api/conversations/{conversation.id}"
    assert httpx.get(url).status_code == 401
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, body in (
        ("POST", "/messages", {"role": "user"}),
        ("POST", "/messages", {"role": "user", "content": "x", "colour": "red"}),
        ("PATCH", "", {"title": ""}),
        ("GET", "/export?format=pdf", None),
    ):
        response = httpx.request(method, url + path, json=body, headers=headers)
        assert response.status_code == 400, (method, path)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    assert httpx.get(agent.api.url + "/api/conversations/abc", headers=headers).status_code == 400
    assert client.get_conversation(conversation.id).messages == []  # nothing was stored by the refusals


def test_store_survives_a_restart(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "chat.sqlite")
    conversation = store.create(NewConversation(messages=[NewMessage(role="user", content="remember me")]))
    store.close()
    again = ConversationStore(tmp_path / "chat.sqlite")
    assert again.get(conversation.id).path()[0].content == "remember me"
    again.close()
