"""The ``nectar`` command line: options derived from settings dataclasses, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import run_nectar

from agent.cli import _generation_settings, build_parser, main
from agent.cli_args import add_dataclass_options, dataclass_from_args
from agent.local_swarm import even_spans
from engine.client.generation import GenerationSettings
from engine.server.server import ServerSettings, parse_blocks, settings_fields


@dataclass
class Knobs:
    name: str = field(metadata={"help": "what to call it"})
    count: int = field(default=3, metadata={"help": "how many"})
    ratio: float = field(default=0.5, metadata={"help": "a fraction"})
    limit: int | None = field(default=None, metadata={"help": "optional cap"})
    peers: list[str] = field(default_factory=list, metadata={"help": "addresses"})
    verbose: bool = field(default=False, metadata={"help": "say more"})


def knobs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    add_dataclass_options(parser, Knobs, skip=("name",))
    return parser


def test_options_are_derived_from_the_dataclass() -> None:
    args = knobs_parser().parse_args(["x"])
    assert dataclass_from_args(Knobs, args) == Knobs(name="x")
    args = knobs_parser().parse_args(
        ["y", "--count", "7", "--ratio", "0.25", "--limit", "9", "--peers", "a", "b", "--verbose"]
    )
    assert dataclass_from_args(Knobs, args) == Knobs("y", 7, 0.25, 9, ["a", "b"], True)
    assert dataclass_from_args(Knobs, args, count=1).count == 1  # explicit values win


def test_option_types_and_help_come_from_the_fields() -> None:
    parser = knobs_parser()
    actions = {action.dest: action for action in parser._actions}
    assert actions["count"].type is int and actions["ratio"].type is float and actions["limit"].type is int
    assert actions["peers"].nargs == "*" and actions["verbose"].nargs == 0
    assert actions["count"].help == "how many (default: 3)" and actions["verbose"].help == "say more"
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--count", "many"])


def test_serve_has_one_option_per_server_setting() -> None:
    parser = build_parser()
    serve = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[
        "serve"
    ]
    options = {option for action in serve._actions for option in action.option_strings}
    for item in settings_fields():
        assert item.metadata.get("help"), f"{item.name} has no help"
        if item.name != "model":
            assert "--" + item.name.replace("_", "-") in options
    args = parser.parse_args(
        ["serve", "tiny", "--new-swarm", "--blocks", "1:3", "--cache-tokens", "64", "--initial-peers", "a", "b"]
    )
    settings = dataclass_from_args(ServerSettings, args)
    assert settings == dataclasses.replace(
        ServerSettings(model="tiny"), new_swarm=True, blocks="1:3", cache_tokens=64, initial_peers=["a", "b"]
    )


def test_generation_options_are_the_settings_fields() -> None:
    parser = build_parser()
    base = ["generate", "m", "--initial-peers", "p", "--prompt", "hi"]
    assert _generation_settings(parser.parse_args(base)) == GenerationSettings()  # the same defaults, greedy
    args = parser.parse_args([*base, "--do-sample", "--temperature", "0.7", "--top-k", "5", "--stop-strings", "a"])
    settings = _generation_settings(args)
    assert settings == GenerationSettings(do_sample=True, temperature=0.7, top_k=5, stop_strings=["a"])
    for command in ("generate", "demo"):
        sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[
            command
        ]
        options = {option for action in sub._actions for option in action.option_strings}
        for item in dataclasses.fields(GenerationSettings):
            assert item.metadata.get("help"), f"{item.name} has no help"
            assert "--" + item.name.replace("_", "-") in options
    assert _generation_settings(parser.parse_args(["demo"])).do_sample is False


def test_parse_blocks() -> None:
    assert parse_blocks(None, 30) == (0, 30)
    assert parse_blocks("3:7", 30) == (3, 7)
    assert parse_blocks(":4", 30) == (0, 4) and parse_blocks("20:", 30) == (20, 30)
    with pytest.raises(ValueError, match="--blocks must look like START:END, got 'three'"):
        parse_blocks("three", 30)
    for text in ("0:99", "5:5", "7:3"):
        with pytest.raises(ValueError, match=f"block range {text} is outside the model's blocks 0:30"):
            parse_blocks(text, 30)


def test_even_spans() -> None:
    assert even_spans(30, 2) == [(0, 15), (15, 30)]
    assert even_spans(4, 3) == [(0, 1), (1, 3), (3, 4)]
    with pytest.raises(ValueError, match="need between 1 and 4 servers, got 5"):
        even_spans(4, 5)


def error_line(text: str) -> str:
    """The single ``nectar: error:`` line of a failed command's stderr (and no traceback anywhere)."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("nectar: error: ")]
    assert len(lines) == 1, text
    return lines[0]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "READY" not in captured.out
    return code, error_line(captured.err)


def test_serve_a_path_that_does_not_exist_in_a_real_process(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "path"
    done = run_nectar("serve", str(missing), "--new-swarm")
    assert done.returncode != 0
    assert error_line(done.stderr).startswith(f"nectar: error: model '{missing}' not found")
    assert "READY" not in done.stdout


def test_serve_blocks_outside_the_model(capsys, tiny_checkpoints) -> None:
    code, line = run_main(capsys, "serve", str(tiny_checkpoints("llama")), "--new-swarm", "--blocks", "0:99")
    assert code == 2 and line == "nectar: error: block range 0:99 is outside the model's blocks 0:4"


def test_serve_without_a_swarm_to_join(capsys, tiny_checkpoints) -> None:
    code, line = run_main(capsys, "serve", str(tiny_checkpoints("llama")))
    assert code == 2 and "give --initial-peers ADDR to join a swarm, or --new-swarm to start one" in line


def test_serve_unknown_dtype(capsys, tiny_checkpoints) -> None:
    code, line = run_main(capsys, "serve", str(tiny_checkpoints("llama")), "--new-swarm", "--dtype", "int8")
    assert code == 2 and "unknown dtype 'int8'" in line


def test_serve_unknown_quantization(capsys, tiny_checkpoints) -> None:
    code, line = run_main(capsys, "serve", str(tiny_checkpoints("llama")), "--new-swarm", "--quant", "int4")
    assert code == 2 and line == "nectar: error: --quant must be one of none, int8, nf4, got 'int4'"


def test_serve_a_directory_that_is_no_model(capsys, tmp_path: Path) -> None:
    code, line = run_main(capsys, "serve", str(tmp_path), "--new-swarm")
    assert code == 2 and line.endswith("is a directory but has no config.json: not a model checkpoint")


def test_serve_an_unsupported_architecture(capsys, tmp_path: Path) -> None:
    from transformers import AutoConfig

    AutoConfig.for_model("gpt2", n_layer=2, n_embd=8, n_head=2).save_pretrained(tmp_path)
    code, line = run_main(capsys, "serve", str(tmp_path), "--new-swarm")
    assert code == 2 and "model type 'gpt2' is not supported; supported: bloom, falcon, gemma3_text, llama" in line


def test_generate_with_invalid_sampling_settings(capsys, tiny_checkpoints) -> None:
    model = str(tiny_checkpoints("llama"))
    code, line = run_main(capsys, "generate", model, "--initial-peers", "x", "--prompt", "hi", "--top-p", "2")
    assert code == 2 and line == "nectar: error: top-p must be in (0, 1], got 2.0"


def test_generate_with_a_missing_model(capsys) -> None:
    code, line = run_main(capsys, "generate", "/no/such/model", "--initial-peers", "x", "--prompt", "hi")
    assert code == 2 and "model '/no/such/model' not found" in line
