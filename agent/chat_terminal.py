"""``nectar chat``: a terminal chat with the running agent's swarm, through the same API as the chat window.

Answers stream as they come; Ctrl-C during an answer stops it (the agent ends the swarm session) and the chat
goes on; Ctrl-C or Ctrl-D at the prompt, or ``/quit``, ends it. The conversation is stored like the chat
window's (``--no-save`` to keep it out), so ``nectar chat --conversation ID`` continues it later.
Imports neither torch nor the engine: it starts at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from agent.chat.schema import Conversation, MessageMeta, Sampling
from agent.chat_client import ChatClient
from agent.client import AgentClientError
from agent.paths import AgentPaths

HELP = "commands: /new (a new conversation), /quit; Ctrl-C stops an answer"


def add_chat_command(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help="chat with the swarm's model in the terminal (the agent must run)")
    chat.add_argument("--system", default="", help="system prompt of a new conversation")
    chat.add_argument("--temperature", type=float, default=None, help="0: greedy (default: 0.7)")
    chat.add_argument("--top-p", type=float, default=None)
    chat.add_argument("--max-tokens", type=int, default=None, help="longest answer (default: 512)")
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--conversation", type=int, default=None, help="continue a stored conversation (its id)")
    chat.add_argument("--no-save", action="store_true", help="do not store this conversation")
    chat.set_defaults(run=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    with ChatClient.connect(AgentPaths.default()) as client:
        return TerminalChat(client, args).run()


class TerminalChat:
    def __init__(
        self, client: ChatClient, args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
    ):
        self.client, self.args, self.out, self.err = client, args, out, err
        self.history: list[dict[str, str]] = []
        self.conversation: Conversation | None = None
        self.sampling = self._sampling(Sampling())
        if args.conversation is not None:
            self.conversation = client.get_conversation(args.conversation)
            self.sampling = self._sampling(self.conversation.sampling)
            self.history = self.conversation.chat_messages()
            print(f"continuing '{self.conversation.title}' ({len(self.conversation.path())} messages)", file=err)
        elif args.system:
            self.history = [{"role": "system", "content": args.system}]

    def _sampling(self, base: Sampling) -> Sampling:
        changes = {"temperature": self.args.temperature, "top_p": self.args.top_p, "max_tokens": self.args.max_tokens}
        changes["seed"] = self.args.seed
        return base.model_copy(update={key: value for key, value in changes.items() if value is not None})

    def run(self) -> int:
        model = self.client.models()[0].id
        print(f"chatting with {model} through the swarm; {HELP}", file=self.err, flush=True)
        while True:
            try:
                line = input("you> ")
            except (EOFError, KeyboardInterrupt):
                print(file=self.out)
                return 0
            text = line.strip()
            if not text:
                continue
            if text == "/quit":
                return 0
            if text == "/new":
                self.conversation, self.history = None, self.history[:1] if self.args.system else []
                print("a new conversation", file=self.err)
                continue
            self.ask(text)

    def ask(self, text: str) -> None:
        """Stream one answer; both turns are stored once it ended (or was stopped); a failure stores nothing."""
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        meta: MessageMeta | None = None
        stream = self.client.chat_stream(self.history, **self.client.sampling_parameters(self.sampling))
        print("nectar> ", end="", file=self.out, flush=True)
        try:
            for delta in stream:
                if delta.text:
                    pieces.append(delta.text)
                    print(delta.text, end="", file=self.out, flush=True)
                if delta.meta is not None:
                    meta = delta.meta
        except KeyboardInterrupt:
            stream.close()  # the agent sees the connection close and ends the swarm session
            print(" [stopped]", file=self.out, flush=True)
            meta = MessageMeta(finish_reason="cancelled")
        except AgentClientError as error:
            print(file=self.out)
            print(f"error: {error}", file=self.err, flush=True)
            self.history.pop()
            return
        else:
            print(file=self.out, flush=True)
        answer = "".join(pieces)
        self.history.append({"role": "assistant", "content": answer})
        meta = meta or MessageMeta()
        meta.sampling = self.sampling
        self._store("user", text, None)
        self._store("assistant", answer, meta)
        if meta is not None and meta.tokens_per_second is not None:
            print(
                f"  [{meta.completion_tokens} tokens, {meta.tokens_per_second:.1f} tokens/s, "
                f"first token after {meta.time_to_first_token:.2f} s]",
                file=self.err,
                flush=True,
            )

    def _store(self, role: str, content: str, meta: MessageMeta | None) -> None:
        if self.args.no_save:
            return
        if self.conversation is None:
            system = self.history[0]["content"] if self.history and self.history[0]["role"] == "system" else ""
            self.conversation = self.client.create_conversation(system_prompt=system, sampling=self.sampling)
        self.client.append_message(self.conversation.id, role, content, meta=meta)  # type: ignore[arg-type]
