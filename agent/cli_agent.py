"""The agent's commands: ``nectar run``, ``status``, ``pause``, ``resume``, ``snooze``, ``stop``, ``config``,
``bench`` and ``secret``. They talk to the running agent through ``AgentClient`` (the API's address is in the
data directory, so they need no flags); ``config`` edits the file directly when no agent runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from importlib.metadata import entry_points
from typing import Any

from agent import autostart
from agent.chat_terminal import add_chat_command
from agent.client import AgentClient, AgentNotRunning
from agent.paths import AgentPaths
from agent.settings import Settings, iter_settings, setting_info, split_key
from agent.settings_file import SettingsFile, parse_value

AGENT_COMMANDS = ("run", "status", "pause", "resume", "snooze", "stop", "config", "secret", "bench", "logs", "chat")
GUI_ENTRY_GROUP = "nectar.gui"  # the GUI package registers `run = module:function` here; the agent never imports it


def add_agent_commands(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="start the volunteer agent (headless with --no-gui)")
    run.add_argument("--no-gui", action="store_true", help="run without the tray: for servers and lab machines")
    add_settings_options(run)
    run.set_defaults(run=cmd_run)

    status = commands.add_parser("status", help="what the running agent is doing and why")
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.set_defaults(run=cmd_status)
    for name, text in (("pause", "drain the server and lend nothing until resumed"), ("resume", "end a pause")):
        commands.add_parser(name, help=text).set_defaults(run=cmd_simple, action=name)
    snooze = commands.add_parser("snooze", help="pause for some minutes, then follow the settings again")
    snooze.add_argument("minutes", type=float)
    snooze.set_defaults(run=cmd_snooze)
    commands.add_parser("stop", help="drain the server and stop the agent").set_defaults(run=cmd_simple, action="stop")

    config = commands.add_parser("config", help="read or change the settings file")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    get = config_commands.add_parser("get", help="print one setting, or all with their help")
    get.add_argument("key", nargs="?")
    get.add_argument("--json", action="store_true")
    set_ = config_commands.add_parser("set", help="change a setting (validated; comments in the file are kept)")
    set_.add_argument("key")
    set_.add_argument("value", help="lists: comma-separated or a JSON list")
    config_commands.add_parser("path", help="print the settings file's path")
    config.set_defaults(run=cmd_config)

    logs = commands.add_parser("logs", help="the last lines of the agent's, its server's or its DHT node's log")
    logs.add_argument("source", nargs="?", default="agent", choices=("agent", "server", "dht"))
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(run=cmd_logs)

    bench = commands.add_parser("bench", help="accelerators, CPU, and how fast this machine serves the model")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--refresh", action="store_true", help="measure now even if a fresh result is cached")
    bench.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    bench.add_argument("--initial-peers", nargs="*", default=None, help=argparse.SUPPRESS)
    bench.add_argument("--settings-json", default=None, help=argparse.SUPPRESS)  # the agent's effective settings
    bench.set_defaults(run=cmd_bench)

    secret = commands.add_parser("secret", help="store a secret in the keyring (or a 0600 file where none exists)")
    secret.add_argument("action", choices=("set", "delete", "where"))
    secret.add_argument("name", help="hf_token or swarm_key")
    secret.set_defaults(run=cmd_secret)

    add_chat_command(commands)


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """``--group-name VALUE`` for every setting: overrides the file for this run only."""
    group_parsers: dict[str, argparse._ArgumentGroup] = {}
    for info in iter_settings():
        group = group_parsers.get(info.group) or parser.add_argument_group(f"settings: {info.group_title}")
        group_parsers[info.group] = group
        flag = "--" + info.key.replace(".", "-").replace("_", "-")
        group.add_argument(
            flag, dest=f"setting:{info.key}", default=None, metavar="VALUE", help=info.describe().replace("%", "%%")
        )  # argparse formats help with %


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for name, text in vars(args).items():
        if name.startswith("setting:") and text is not None:
            key = name.removeprefix("setting:")
            values[key] = parse_value(setting_info(key), text)
    return values


def cmd_run(args: argparse.Namespace) -> int:
    if not args.no_gui:
        gui = [entry for entry in entry_points(group=GUI_ENTRY_GROUP) if entry.name == "run"]
        if not gui:
            print("the tray GUI is not installed; run the agent headless with: nectar run --no-gui", file=sys.stderr)
            return 2
        return int(gui[0].load()(args) or 0)
    from agent.runner import run_headless

    return run_headless(AgentPaths.default(), settings_overrides(args))


def _client() -> AgentClient:
    return AgentClient.connect(AgentPaths.default())


def cmd_status(args: argparse.Namespace) -> int:
    with _client() as client:
        status = client.status()
    if args.json:
        print(status.model_dump_json(indent=1))
    else:
        print(format_status(status))
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    with _client() as client:
        answer = getattr(client, args.action)()
    if args.action == "stop":
        print(answer.message)
    else:
        print(f"{answer.mode}: {answer.reason}")
    return 0


def cmd_snooze(args: argparse.Namespace) -> int:
    with _client() as client:
        status = client.snooze(args.minutes)
    print(f"{status.mode}: {status.reason}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    paths = AgentPaths.default()
    file = SettingsFile(paths.config_file)
    if args.config_command == "path":
        print(file.path)
        return 0
    if args.config_command == "set":
        split_key(args.key)
        value = parse_value(setting_info(args.key), args.value)
        try:
            with AgentClient.connect(paths) as client:  # a running agent validates, writes and applies it at once
                client.set_settings({args.key: value})
        except AgentNotRunning:
            file.update({args.key: value})
            if args.key == autostart.SETTING:  # a running agent applies it itself
                print(f"start at login: {autostart.apply(bool(value))}")
        print(f"{args.key} = {json.dumps(file.get(args.key))}")
        return 0
    loaded = file.load()
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.key is not None:
        value = loaded.settings.get(args.key)
        print(json.dumps(value) if args.json or not isinstance(value, str) else value)
        return 0
    values = loaded.settings.flat()
    if args.json:
        print(json.dumps(values, indent=1))
        return 0
    for info in iter_settings():
        print(f"{info.key} = {json.dumps(values[info.key])}    # {info.describe()}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Through the running agent; without one, the files themselves (the same directory)."""
    from agent.logs import tail_lines

    paths = AgentPaths.default()
    try:
        with AgentClient.connect(paths) as client:
            answer = client.logs(args.source, args.lines)
        lines, file = answer.lines, answer.file
    except AgentNotRunning:
        file = str(paths.log_file(args.source))
        lines = tail_lines(paths.log_file(args.source), max(1, args.lines))
    print(f"# {file}", file=sys.stderr)
    print("\n".join(lines))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agent import benchmark

    paths = AgentPaths.default()
    if args.measure_only:  # the child the running agent starts
        if args.settings_json:
            settings = Settings.model_validate_json(args.settings_json)
        else:
            settings = SettingsFile(paths.config_file).load().settings
        benchmark.print_json(benchmark.measure_machine(settings, args.initial_peers, paths.swarm_key()))
        return 0
    try:
        with AgentClient.connect(paths) as client:
            answer = client.run_benchmark(refresh=args.refresh)
    except AgentNotRunning:
        answer = benchmark.load_cached(paths)
        settings = SettingsFile(paths.config_file).load().settings
        stale = answer.age_s is None or answer.age_s > settings.compute.benchmark_max_age_days * 86400
        if args.refresh or stale:
            print("measuring (loads one block of the model)...", file=sys.stderr, flush=True)
            answer = benchmark.measure_machine(settings, swarm_key=paths.swarm_key())
            benchmark.save(paths.create(), answer)
    if args.json:
        benchmark.print_json(answer)
    else:
        print(benchmark.format_benchmark(answer))
    return 0


def cmd_secret(args: argparse.Namespace) -> int:
    from agent.secrets import SecretStore

    store = SecretStore(AgentPaths.default().create().secrets_file)
    if args.action == "set":
        value = getpass.getpass(f"{args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        location = store.set(args.name, value)
    elif args.action == "delete":
        store.delete(args.name)
        location = store.where(args.name)
    else:
        location = store.where(args.name)
    state = "stored" if location.present else "not set"
    print(f"{args.name}: {state}; store: {location.backend} ({location.detail})")
    return 0


REACHABILITY_WORDS = {
    "direct": "directly",
    "relay": "through a relay",
    "unreachable": "not at all",
    "unknown": "not checked (local swarm)",
}


def reachability_text(reachability: str | None, rtt_ms: float | None) -> str:
    """How peers reach this machine's server, and the round trip to the swarm, in the words the CLI uses."""
    words = REACHABILITY_WORDS.get(reachability or "unknown", reachability or "unknown")
    return words + (f", {rtt_ms:.0f} ms round trip to the swarm" if rtt_ms is not None else "")


def format_status(status: Any) -> str:
    """The human form of ``Status``: mode and reason first, in the words the tray uses."""
    since = time.strftime("%H:%M:%S", time.localtime(status.since))
    lines = [f"mode: {status.mode} ({status.reason}) since {since}"]
    if status.stop_reason:
        lines.append(f"stopped serving: {status.stop_reason}")
    server = status.server
    parts = [server.state]
    if server.blocks:
        parts.append(f"blocks {server.blocks[0]}:{server.blocks[1]}")
    if server.throughput is not None:
        parts.append(f"{server.throughput:.0f} tokens/s announced")
    parts.append(f"{server.sessions} sessions open")
    if server.restarts:
        parts.append(f"restarted {server.restarts} times")
    if server.detail:
        parts.append(server.detail)
    lines.append("server: " + ", ".join(parts))
    if server.reachability or server.swarm_rtt_ms is not None:
        lines.append("reachable: " + reachability_text(server.reachability, server.swarm_rtt_ms))
    swarm = status.swarm
    coverage = f", {swarm.coverage:.0%} of blocks served" if swarm.coverage is not None else ""
    servers = f", {swarm.servers} servers" if swarm.servers is not None else ""
    lines.append(f"swarm: {swarm.name}, model {swarm.model}{servers}{coverage}")
    hours = status.uptime_s / 3600
    lines.append(f"served: {status.tokens_served} tokens in {status.sessions_served} sessions; up {hours:.1f} h")
    if status.hours:
        spent = ", ".join(f"{name} {value:.1f} h" for name, value in sorted(status.hours.items()))
        lines.append(f"all time: {spent}")
    for error in status.last_errors[-3:]:
        lines.append(f"error at {time.strftime('%H:%M:%S', time.localtime(error.time))}: {error.message}")
    lines += [f"warning: {warning}" for warning in status.warnings]
    return "\n".join(lines)
