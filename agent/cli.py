"""The ``nectar`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from agent.cli_agent import AGENT_COMMANDS, add_agent_commands
from agent.cli_args import add_dataclass_options, dataclass_from_args

DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


def _ready(enabled: bool, info: dict) -> None:
    if enabled:
        print("READY " + json.dumps(info), flush=True)


def cmd_dht(args: argparse.Namespace) -> int:
    from agent.dht_node import run_dht_node
    from engine.swarm_key import load_swarm_key, new_swarm_key

    if args.new_swarm_key:
        print(new_swarm_key(), end="")
        return 0
    swarm_key = load_swarm_key(args.swarm_key) if args.swarm_key else None

    def on_ready(maddrs: list[str]) -> None:
        print("DHT node is running. Join it with:", file=sys.stderr)
        print("  --initial-peers " + " ".join(maddrs), file=sys.stderr, flush=True)
        _ready(args.ready_json, {"maddrs": maddrs})

    asyncio.run(run_dht_node(args.host, args.port, args.initial_peers, args.identity_path, on_ready, swarm_key))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.server.server import ServerSettings, run_server

    settings = dataclass_from_args(ServerSettings, args)

    def on_ready(info: dict) -> None:
        print(f"serving blocks {info['blocks'][0]}:{info['blocks'][1]} as {info['peer_id']}", file=sys.stderr)
        print("  peers can join with --initial-peers " + " ".join(info["maddrs"]), file=sys.stderr, flush=True)
        _ready(args.ready_json, info)

    asyncio.run(run_server(settings, on_ready))
    return 0


def cmd_swarm(args: argparse.Namespace) -> int:
    from engine.records import default_dht_prefix
    from engine.swarm_view import format_view, read_view

    num_blocks = args.num_blocks
    if num_blocks is None:
        from engine.weights import resolve_model

        num_blocks = resolve_model(args.model).config.num_hidden_layers
    prefix = args.dht_prefix or default_dht_prefix(args.model)
    view = read_view(args.initial_peers, prefix, num_blocks, swarm_key=args.swarm_key)
    print(json.dumps(view.to_dict(), indent=1) if args.json else format_view(view))
    return 0


def _generation_settings(args: argparse.Namespace):
    from engine.client.generation import GenerationSettings

    return dataclass_from_args(GenerationSettings, args)


def stream_answer(model_name: str, initial_peers: list[str], prompt: str, args: argparse.Namespace, prefix=None):
    """Generate through the swarm and print the text as it comes; returns the result."""
    from engine.client.config import ClientSettings
    from engine.client.generation import chat_prompt, generate
    from engine.client.model import DistributedCausalLM

    settings = _generation_settings(args)
    settings.validate()
    client_settings = dataclass_from_args(ClientSettings, args)
    model = DistributedCausalLM.connect(model_name, initial_peers, prefix, settings=client_settings)
    try:
        tokenizer = model.source.tokenizer()
        input_ids = chat_prompt(tokenizer, prompt) if args.chat else list(tokenizer(prompt)["input_ids"])
        tuned = model
        if getattr(args, "prompts", None):
            from engine.client.finetune import load_trained

            tuned = load_trained(args.prompts, model)
        adapter = getattr(args, "adapter", None)
        on_text = lambda text: print(text, end="", flush=True)  # noqa: E731
        drafter = None
        if getattr(args, "draft_model", None):
            from engine.client.speculative import load_draft_model

            drafter = load_draft_model(args.draft_model, model.config)
            drafter.processors = settings.processors(len(input_ids)) if settings.do_sample else None
        result = generate(tuned, input_ids, settings, tokenizer, on_text=on_text, adapter=adapter, drafter=drafter)
        print(flush=True)
        return result
    finally:
        model.close()


def _print_stats(result) -> None:
    print(
        f"route: {' -> '.join(result.route)}\n"
        f"{len(result.tokens)} tokens, {result.tokens_per_second:.1f} tokens/s, "
        f"first token after {result.time_to_first_token:.2f} s, stopped by {result.stop_reason}"
        + (
            f"\nspeculative decoding: {result.accepted} of {result.drafted} proposed tokens kept, "
            f"{result.tokens_per_step:.2f} tokens per trip along the chain"
            if result.drafted
            else ""
        ),
        file=sys.stderr,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from engine.errors import SWARM_ERRORS

    try:
        result = stream_answer(args.model, args.initial_peers, args.prompt, args, args.dht_prefix)
    except SWARM_ERRORS as error:
        print(f"\nnectar: error: {error}", file=sys.stderr)
        return 1
    _print_stats(result)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.client.finetune import FinetuneSettings, finetune_file

    settings = dataclass_from_args(FinetuneSettings, args)
    settings.validate()
    bars: list[tqdm] = []  # opened at the first step: a bad data file fails without a bar

    def on_progress(progress) -> None:
        if not bars:
            bars.append(tqdm(total=progress.steps, desc=settings.method, unit="step", file=sys.stderr))
        bars[0].update(1)
        bars[0].set_postfix(loss=f"{progress.loss:.4f}", tokens_per_s=f"{progress.tokens_per_second:.0f}")

    try:
        path, losses = finetune_file(
            args.model, args.initial_peers, args.data, settings, args.out, args.dht_prefix, on_progress, args.swarm_key
        )
    finally:
        for bar in bars:
            bar.close()
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; saved the trained prompts to {path}", file=sys.stderr)
    print(f"use them with: nectar generate {args.model} --initial-peers ... --prompts {path}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.local_swarm import LocalSwarm, even_spans
    from engine.errors import SWARM_ERRORS
    from engine.weights import DEFAULT_MODEL, resolve_model

    print(f"preparing {DEFAULT_MODEL} (converted once, then cached)...", file=sys.stderr, flush=True)
    source = resolve_model(DEFAULT_MODEL)  # convert before the servers start, so they do not all do it
    spans = even_spans(source.config.num_hidden_layers, args.servers)
    print(f"starting a local swarm: a DHT node and {args.servers} servers for blocks {spans}", file=sys.stderr)
    log_dir = demo_log_dir()
    with LocalSwarm(DEFAULT_MODEL, spans, log_dir=log_dir) as swarm:
        print(f"prompt: {args.prompt}", file=sys.stderr, flush=True)
        try:
            result = stream_answer(DEFAULT_MODEL, swarm.initial_peers, args.prompt, args)
        except SWARM_ERRORS as error:
            print(f"\nnectar: error: {error}", file=sys.stderr)
            for line in swarm.exited_servers():
                print(f"nectar: {line}", file=sys.stderr)
            print(f"nectar: the servers' full logs are in {log_dir}", file=sys.stderr)
            return 1
        _print_stats(result)
    print("local swarm stopped", file=sys.stderr)
    return 0


def demo_log_dir() -> Path:
    """Where ``nectar demo`` keeps its children's logs: under ``NECTAR_HOME`` if set, else the user log dir."""
    import platformdirs

    home = os.environ.get("NECTAR_HOME")
    root = Path(home) / "logs" if home else platformdirs.user_log_path("nectar")
    return root / "demo"


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The generation options: one per ``GenerationSettings`` field, with its default and help."""
    from engine.client.generation import GenerationSettings

    add_dataclass_options(parser, GenerationSettings)
    parser.add_argument("--no-chat", dest="chat", action="store_false", help="send the prompt as raw text")


def build_parser() -> argparse.ArgumentParser:
    from engine.client.config import ClientSettings
    from engine.client.finetune import FinetuneSettings
    from engine.server.server import ServerSettings

    parser = argparse.ArgumentParser(prog="nectar", description="Serve, use and fine-tune an LLM over a swarm.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    dht = commands.add_parser("dht", help="start a bootstrap DHT node and print its address")
    dht.add_argument("--host", default="127.0.0.1")
    dht.add_argument("--port", type=int, default=0)
    dht.add_argument("--initial-peers", nargs="*", default=[])
    dht.add_argument("--identity-path", default=None)
    dht.add_argument("--swarm-key", default=None, help="swarm key file: only peers holding it may use this swarm")
    dht.add_argument(
        "--new-swarm-key",
        action="store_true",
        help="print a new swarm key and exit (save it to a file, e.g. `nectar dht --new-swarm-key > swarm.key`, "
        "and hand it to the swarm's members)",
    )
    dht.set_defaults(run=cmd_dht)

    serve = commands.add_parser("serve", help="serve a span of a model's blocks")
    serve.add_argument("model")
    add_dataclass_options(serve, ServerSettings, skip=("model",))
    serve.set_defaults(run=cmd_serve)

    swarm = commands.add_parser("swarm", help="show which servers hold which blocks, and each block's throughput")
    swarm.add_argument("model", help="model name, as servers were started with")
    swarm.add_argument("--initial-peers", nargs="+", required=True)
    swarm.add_argument("--dht-prefix", default=None)
    swarm.add_argument("--num-blocks", type=int, default=None, help="blocks of the model (default: from its config)")
    swarm.add_argument("--json", action="store_true", help="print JSON instead of a table")
    swarm.add_argument("--swarm-key", default=None, help="swarm key file of a private swarm")
    swarm.set_defaults(run=cmd_swarm)

    gen = commands.add_parser("generate", help="generate text through a swarm")
    gen.add_argument("model")
    gen.add_argument("--initial-peers", nargs="+", required=True)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--dht-prefix", default=None)
    gen.add_argument("--prompts", default=None, help="trained prompts (.safetensors) from `nectar finetune`")
    gen.add_argument("--adapter", default=None, help="LoRA adapter the servers apply (default: none)")
    gen.add_argument(
        "--draft-model",
        default=None,
        help="a small local model sharing the tokenizer that proposes tokens for speculative decoding "
        "(default: proposals from text seen before)",
    )
    _add_generation_options(gen)
    add_dataclass_options(gen, ClientSettings)
    gen.set_defaults(run=cmd_generate)

    tune = commands.add_parser("finetune", help="train prompts through a swarm (the model stays frozen)")
    tune.add_argument("model")
    tune.add_argument("--initial-peers", nargs="+", required=True)
    tune.add_argument("--data", required=True, help='JSONL: {"prompt", "completion"} or {"text"} per line')
    tune.add_argument("--out", default="prompts.safetensors", help="where to save the trained prompts")
    tune.add_argument("--dht-prefix", default=None)
    tune.add_argument("--swarm-key", default=None, help="swarm key file of a private swarm")
    add_dataclass_options(tune, FinetuneSettings)
    tune.set_defaults(run=cmd_finetune)

    demo = commands.add_parser("demo", help="start a local swarm of the embedded model and chat through it")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--servers", type=int, default=2, choices=(2, 3))
    _add_generation_options(demo)
    add_dataclass_options(demo, ClientSettings)
    demo.set_defaults(run=cmd_demo)

    add_agent_commands(commands)

    for sub in (dht, serve):
        sub.add_argument("--ready-json", action="store_true", help=argparse.SUPPRESS)
    return parser


def _agent_errors() -> tuple[type[Exception], ...]:
    from agent.client import AgentClientError
    from agent.service import AlreadyRunning
    from agent.settings import UnknownSettingError
    from agent.settings_file import SettingsError

    return (AgentClientError, AlreadyRunning, SettingsError, UnknownSettingError, OSError)


def build_agent_parser() -> argparse.ArgumentParser:
    """Only the agent's commands: they never load torch, so ``nectar status`` answers at once."""
    parser = argparse.ArgumentParser(prog="nectar", description="Control the Nectar volunteer agent.")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_agent_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return build_agent_parser() if command in AGENT_COMMANDS else build_parser()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # plain `nectar`: start the agent if needed and show the tray (or say how to run headless)
        argv = ["run"]
    args = _parser_for(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command in ("dht", "serve") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    agent_errors = _agent_errors()
    try:
        return args.run(args)
    except agent_errors as error:
        print(f"nectar: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from engine.errors import USER_ERRORS  # the engine loads only when a command needed it

        if not isinstance(error, USER_ERRORS):
            raise
        print(f"nectar: error: {error}", file=sys.stderr)
        return 2
