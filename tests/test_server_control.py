"""The server's control channel: the throttle file it follows and the status file it writes (no agent needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.server import control as control_module
from engine.server.control import ServerControl, Throttle


def test_throttle_file_changes_are_read_and_bad_ones_ignored(tmp_path: Path) -> None:
    control = ServerControl(tmp_path)
    assert not control.read() and control.throttle == Throttle()
    (tmp_path / "throttle.json").write_text(json.dumps({"threads": 2, "duty_cycle": 0.5, "throughput_scale": 0.25}))
    assert control.read() and control.throttle == Throttle(2, 0.5, 0.25)
    assert not control.read()  # unchanged file
    for bad in ("{not json", json.dumps({"duty_cycle": 0}), json.dumps([1, 2])):
        (tmp_path / "throttle.json").write_text(bad)
        control._mtime = None  # the same second's mtime may not change on every file system
        assert not control.read() and control.throttle == Throttle(2, 0.5, 0.25)
    (tmp_path / "throttle.json").unlink()
    assert control.read() and control.throttle == Throttle()


def test_duty_cycle_rests_and_work_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rests: list[float] = []
    monkeypatch.setattr(control_module.time, "sleep", rests.append)
    control = ServerControl(tmp_path)
    control.throttle = Throttle(threads=0, duty_cycle=0.25, throughput_scale=1.0)

    class Session:
        session_id = "abc"

    control.after_job((Session(), torch.zeros(2, 3, 8), 0), 0.1)
    control.after_job((Session(), torch.zeros(1, 1, 8), 3), 0.1)
    assert rests == pytest.approx([0.3, 0.3])  # t * (1 - d) / d: computing a quarter of the time
    assert control.tokens_computed == 7 and control.sessions_computed == 1
    control.throttle = Throttle()
    control.after_job((torch.zeros(4, 8),), 10.0)
    assert len(rests) == 2  # full duty: no rest
    control.write_status({"state": "online"})
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["tokens_computed"] == 11 and status["state"] == "online" and status["throttle"]["duty_cycle"] == 1
