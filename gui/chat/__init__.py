"""The chat window: talk to the swarm's model through the agent's chat API.

- ``window.py``: ``ChatWindow``: the conversation, the composer, streaming, Stop, Regenerate, edit, export.
- ``message_view.py``: ``MessageView``: one message: Markdown, branch arrows (2/3), actions, speed and route.
- ``conversation_list.py``: ``ConversationList``: the side panel: search, new, rename, delete.
- ``parameters.py``: ``ParametersPanel``: system prompt and sampling of the conversation shown.
- ``markdown.py``: Markdown to the HTML a ``QTextBrowser`` shows, code highlighted, a copy link per block.
- ``branches.py``: pure helpers over the message tree (which branch, which leaf).
"""
