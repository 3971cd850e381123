"""The Linux .deb as a volunteer gets it: installed with dpkg, run with no Python environment on the PATH,
started as the systemd user unit starts it, stopped, and removed leaving only the user's own directory.

Not in the default run (it installs a package into this machine): ``sudo pytest -m packaging -v
tests/test_packaging_deb.py``. It takes ``$NECTAR_DEB`` (or the newest ``build/linux/nectar_*.deb``), else builds one
with ``installers/linux/build.sh`` using this Python (many minutes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = Path("/usr/lib/systemd/user/nectar.service")
MINIMAL_PATH = "/usr/bin:/bin"  # no virtual environment: the installed command must bring its own Python

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(sys.platform != "linux" or shutil.which("dpkg") is None, reason="needs dpkg (Debian, Ubuntu)"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="installs a .deb: run as root"),
    pytest.mark.timeout(3600),
]


def find_or_build_deb() -> Path:
    given = os.environ.get("NECTAR_DEB")
    if given:
        return Path(given)
    built = sorted((ROOT / "build" / "linux").glob("nectar_*.deb"), key=lambda path: path.stat().st_mtime)
    if built:
        return built[-1]
    build = ROOT / "installers" / "linux" / "build.sh"
    subprocess.run([str(build)], env={**os.environ, "NECTAR_PYTHON": sys.executable}, check=True)
    return sorted((ROOT / "build" / "linux").glob("nectar_*.deb"))[-1]


def clean_env(home: Path, nectar_home: Path) -> list[str]:
    """``env -i`` with only what a login session would give: no virtual environment, no PYTHONPATH."""
    values = {"PATH": MINIMAL_PATH, "HOME": str(home), "NECTAR_HOME": str(nectar_home), "LANG": "C.UTF-8"}
    values["OMP_NUM_THREADS"] = "1"  # the machine's cores are shared with other tests
    return ["env", "-i", *(f"{name}={value}" for name, value in values.items())]


def installed(package: str = "nectar") -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and "ok installed" in done.stdout


def test_deb_installs_runs_offline_and_uninstalls_cleanly(tmp_path: Path) -> None:
    if installed():
        pytest.fail("a nectar package is already installed on this machine: remove it first (dpkg --purge nectar)")
    deb = find_or_build_deb()
    print(f"\npackage: {deb} ({deb.stat().st_size / 2**20:.0f} MiB)")
    home, nectar_home = tmp_path / "user", tmp_path / "user" / "nectar-home"
    home.mkdir()
    env = clean_env(home, nectar_home)

    subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True)
    files = subprocess.run(["dpkg", "-L", "nectar"], check=True, capture_output=True, text=True).stdout.split()
    try:
        command = shutil.which("nectar", path=MINIMAL_PATH)
        assert command == "/usr/bin/nectar" and os.path.realpath(command) == "/opt/nectar/nectar"
        for path in ("/usr/share/applications/nectar.desktop", str(UNIT)):
            assert path in files

        started = time.monotonic()
        demo_args = [*env, "nectar", "demo", "--max-new-tokens", "24"]
        demo = subprocess.run(demo_args, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        print(f"$ nectar demo  ({time.monotonic() - started:.0f} s, exit {demo.returncode})\n{demo.stdout}")
        print("\n".join(demo.stderr.splitlines()[-6:]))
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "Paris" in demo.stdout

        assert run(env, "config", "set", "api.port", "0").returncode == 0  # any free port: other agents may run here
        # other tests' load on this machine is not its owner's work: lend anyway, so the server starts
        assert run(env, "config", "set", "activity.other_cpu_percent_max", "100").returncode == 0
        exec_start = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
        argv = shlex.split(exec_start.removeprefix("ExecStart="))
        print(f"$ {shlex.join(argv)}  (the unit's ExecStart)")
        output = (tmp_path / "agent-output.txt").open("w")  # a file: a full pipe would block the agent
        agent = subprocess.Popen([*env, *argv], cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            status = wait_for_server(env, agent, tmp_path / "agent-output.txt")
            print(f"$ nectar status\n{run(env, 'status').stdout}")
            server_exe = os.path.realpath(f"/proc/{status['server']['pid']}/exe")
            assert server_exe == "/opt/nectar/nectar", "the server child must be the bundle's own executable"
            stop = run(env, "stop")
            assert stop.returncode == 0, stop.stderr
            assert agent.wait(120) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
            output.close()
            print("agent's last lines:\n" + "\n".join(read_tail(tmp_path / "agent-output.txt", 5)))
    finally:
        purge = subprocess.run(["dpkg", "--purge", "nectar"], capture_output=True, text=True)
    assert purge.returncode == 0, purge.stderr
    left = [path for path in files if os.path.lexists(path) and not os.path.isdir(path)]
    assert left == [] and not os.path.exists("/opt/nectar") and shutil.which("nectar", path=MINIMAL_PATH) is None
    assert (nectar_home / "config" / "nectar.toml").is_file()  # the user's data stays theirs
    print(f"removed; left behind only the user's directory: {sorted(p.name for p in nectar_home.iterdir())}")


def run(env: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*env, "nectar", *args], capture_output=True, text=True, timeout=120)


def read_tail(path: Path, lines: int) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:]


def wait_for_server(env: list[str], agent: subprocess.Popen, log: Path, timeout: float = 900) -> dict:
    """Poll ``nectar status --json`` until the agent's server runs; fail with the agent's output if it ends."""
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            pytest.fail(f"the agent exited with {agent.returncode}:\n" + "\n".join(read_tail(log, 30)))
        done = run(env, "status", "--json")
        if done.returncode == 0:
            last = json.loads(done.stdout)
            if last["server"]["state"] == "running":
                return last
            if last["server"]["state"] == "failed":
                pytest.fail(f"the server failed: {last['server']['detail']}")
        time.sleep(2)
    pytest.fail(f"the server did not start in {timeout:.0f} s; last status: {last}")
