"""Pure helpers over a conversation's message tree (``agent.chat.schema.Conversation``)."""

from __future__ import annotations

from agent.chat.schema import Conversation


def leaf_of(conversation: Conversation, message_id: int) -> int:
    """The newest leaf under ``message_id``: where showing that message's branch lands (newest child each step)."""
    children: dict[int, list[int]] = {}
    for message in conversation.messages:
        if message.parent_id is not None:
            children.setdefault(message.parent_id, []).append(message.id)
    node = message_id
    while children.get(node):
        node = max(children[node])  # ids grow with time: the newest reply
    return node


def position(conversation: Conversation, message_id: int) -> tuple[int, int]:
    """(1-based index, count) of ``message_id`` among its siblings: the '2/3' of the branch arrows."""
    siblings = [message.id for message in conversation.siblings(message_id)]
    return siblings.index(message_id) + 1, len(siblings)


def sibling(conversation: Conversation, message_id: int, step: int) -> int | None:
    """The sibling ``step`` places away (-1: previous, +1: next), or None at either end."""
    siblings = [message.id for message in conversation.siblings(message_id)]
    index = siblings.index(message_id) + step
    return siblings[index] if 0 <= index < len(siblings) else None
