"""The throttle policy, table-driven: every mode and reason, the priority order, hysteresis, snooze expiry,
manual pause, schedule edges (midnight, week wrap) and battery thresholds. Pure: no processes, no clock."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from agent.settings import Settings
from agent.throttle import Observations, ThrottleState, decide, in_schedule

MONDAY_NOON = datetime(2026, 11, 23, 12, 0)  # a Monday
NOW = MONDAY_NOON.timestamp()


def observe(**values: object) -> Observations:
    base = dict(now=NOW, local_time=MONDAY_NOON, idle_seconds=0.0, on_battery=False, battery_percent=None)
    return Observations(**{**base, **values})  # type: ignore[arg-type]


def settings(**groups: dict) -> Settings:
    return Settings.model_validate(groups)


CASES = [
    # (name, observations, settings, state, mode, reason fragment)
    ("active", {}, {}, {}, "reduced", "you are using the computer"),
    ("away", {"idle_seconds": 600}, {}, {}, "full", "away for 10 min"),
    ("just under idle", {"idle_seconds": 179}, {}, {}, "reduced", "using the computer"),
    ("exactly idle", {"idle_seconds": 180}, {}, {}, "full", "away"),
    ("active, pause setting", {}, {"activity": {"when_active": "paused"}}, {}, "paused", "using the computer"),
    ("unknown idle", {"idle_seconds": None}, {}, {}, "full", "idle time unknown"),
    ("unknown idle, reduced", {"idle_seconds": None}, {"activity": {"when_unknown": "reduced"}}, {}, "reduced", ""),
    ("manual", {"idle_seconds": 600}, {}, {"manual_pause": True}, "paused", "paused by you"),
    ("snooze", {"idle_seconds": 600}, {}, {"snoozed_until": NOW + 60}, "paused", "snoozed until"),
    ("snooze expired", {"idle_seconds": 600}, {}, {"snoozed_until": NOW - 1}, "full", "away"),
    ("battery", {"on_battery": True, "idle_seconds": 600}, {}, {}, "paused", "on battery"),
    (
        "battery allowed",
        {"on_battery": True, "idle_seconds": 600},
        {"activity": {"pause_on_battery": False}},
        {},
        "full",
        "",
    ),
    (
        "battery low",
        {"battery_percent": 19.0},
        {"activity": {"battery_min_percent": 20}},
        {},
        "paused",
        "battery at 19%",
    ),
    ("battery at limit", {"battery_percent": 20.0}, {"activity": {"battery_min_percent": 20}}, {}, "reduced", ""),
    (
        "schedule",
        {"idle_seconds": 600},
        {"schedule": {"every_day": "18:00-23:00"}},
        {},
        "paused",
        "outside the schedule",
    ),
    ("schedule off", {}, {"schedule": {"monday": "off"}}, {}, "paused", "Monday: off"),
    ("exclusive", {"exclusive_program": "steam"}, {}, {}, "paused", "steam is running"),
    ("gpu busy", {"other_gpu_percent": 31.0}, {}, {}, "paused", "use the GPU (31% > 30%)"),
    ("gpu at limit", {"other_gpu_percent": 30.0}, {}, {}, "reduced", ""),
    ("cpu busy", {"other_cpu_percent": 75.0}, {}, {}, "paused", "use the CPU (75% > 50%)"),
    (
        "memory over in-use limit",
        {"server_memory_gb": 3.0},
        {"compute": {"memory_active_gb": 2}},
        {},
        "paused",
        "3.0 GiB",
    ),
    ("memory under in-use limit", {"server_memory_gb": 1.0}, {"compute": {"memory_active_gb": 2}}, {}, "reduced", ""),
    ("owner request while active", {"owner_requests": 1}, {}, {}, "full", "serving your own request"),
]


@pytest.mark.parametrize(("name", "obs", "config", "state", "mode", "reason"), CASES, ids=[case[0] for case in CASES])
def test_each_mode_and_reason(name: str, obs: dict, config: dict, state: dict, mode: str, reason: str) -> None:
    decision = decide(observe(**obs), settings(**config), ThrottleState(**state))
    assert decision.mode == mode
    assert reason in decision.reason


# Every pause reason at once: removing the highest-priority one reveals the next, in the documented order.
PRIORITY = [
    ("manual", "state", {"manual_pause": True}, "paused by you"),
    ("snooze", "state", {"snoozed_until": NOW + 60}, "snoozed"),
    ("battery", "obs", {"on_battery": True}, "on battery"),
    ("battery low", "obs", {"battery_percent": 5.0}, "battery at 5%"),
    ("schedule", "settings", {"schedule": {"every_day": "off"}}, "outside the schedule"),
    ("exclusive", "obs", {"exclusive_program": "blender"}, "blender is running"),
    ("gpu", "obs", {"other_gpu_percent": 90.0}, "GPU"),
    ("cpu", "obs", {"other_cpu_percent": 90.0}, "CPU"),
    ("owner request", "obs", {"owner_requests": 1}, "your own request"),
    ("active", "obs", {"idle_seconds": 0.0}, "using the computer"),
]


def test_reasons_are_checked_in_the_documented_priority_order() -> None:
    for first in range(len(PRIORITY)):
        obs, state, config = {}, {}, {"activity": {"battery_min_percent": 10}}
        for _, where, values, _ in PRIORITY[first:]:
            {"obs": obs, "state": state, "settings": config}[where].update(values)
        decision = decide(observe(**obs), settings(**config), ThrottleState(**state))
        assert PRIORITY[first][3] in decision.reason, PRIORITY[first][0]


def test_hysteresis_holds_a_policy_pause_until_it_stayed_clear() -> None:
    config = settings(activity={"resume_after_seconds": 30})
    state = decide(observe(other_cpu_percent=90.0, idle_seconds=600), config, ThrottleState()).next_state
    assert state.mode == "paused"
    modes = []
    for seconds in (0, 10, 29, 31):
        decision = decide(observe(now=NOW + seconds, idle_seconds=600, other_cpu_percent=5.0), config, state)
        state = decision.next_state
        modes.append(decision.mode)
    assert modes == ["paused", "paused", "paused", "full"]
    # a spike while held restarts the wait
    state = decide(observe(other_cpu_percent=90.0), config, ThrottleState()).next_state
    state = decide(observe(now=NOW + 20, other_cpu_percent=5.0), config, state).next_state
    state = decide(observe(now=NOW + 25, other_cpu_percent=90.0), config, state).next_state
    held = decide(observe(now=NOW + 50, other_cpu_percent=5.0), config, state)
    assert held.mode == "paused" and "resuming in 30 s" in held.reason


def test_stepping_down_is_immediate_and_the_owner_resume_is_not_held() -> None:
    config = settings()
    state = decide(observe(idle_seconds=600), config, ThrottleState()).next_state
    assert state.mode == "full"
    assert decide(observe(now=NOW + 1, idle_seconds=0.5), config, state).mode == "reduced"
    paused = decide(observe(), config, dataclasses.replace(state, manual_pause=True)).next_state
    resumed = decide(observe(now=NOW + 1, idle_seconds=600), config, dataclasses.replace(paused, manual_pause=False))
    assert resumed.mode == "full"


def test_snooze_expires_by_itself_and_clears_from_the_state() -> None:
    config = settings()
    state = ThrottleState(snoozed_until=NOW + 60)
    assert decide(observe(idle_seconds=600), config, state).mode == "paused"
    after = decide(observe(now=NOW + 61, idle_seconds=600), config, state)
    assert after.mode == "full" and after.next_state.snoozed_until is None


def test_since_changes_only_with_the_mode() -> None:
    config = settings()
    first = decide(observe(), config, ThrottleState(since=0)).next_state
    assert first.since == NOW
    later = decide(observe(now=NOW + 5), config, first).next_state
    assert later.since == NOW


SCHEDULES = [
    # (schedule, weekday 0=Monday, HH:MM, allowed)
    ({"every_day": "09:00-17:00"}, 0, "08:59", False),
    ({"every_day": "09:00-17:00"}, 0, "09:00", True),
    ({"every_day": "09:00-17:00"}, 0, "17:00", False),
    ({"every_day": "22:00-07:00"}, 2, "23:30", True),
    ({"every_day": "22:00-07:00"}, 3, "06:59", True),  # after midnight: Wednesday's window
    ({"every_day": "22:00-07:00"}, 3, "07:00", False),
    ({"every_day": "off", "sunday": "22:00-06:00"}, 0, "03:00", True),  # the week wraps: Sunday night into Monday
    ({"every_day": "off", "sunday": "22:00-06:00"}, 0, "23:00", False),
    ({"every_day": "off", "saturday": "00:00-24:00"}, 5, "23:59", True),
    ({"every_day": "00:00-24:00", "friday": "off"}, 4, "12:00", False),
    ({"every_day": "09:00-12:00, 13:00-17:00"}, 1, "12:30", False),
    ({"every_day": "09:00-12:00, 13:00-17:00"}, 1, "13:30", True),
]


@pytest.mark.parametrize(("schedule", "weekday", "clock", "allowed"), SCHEDULES)
def test_schedule_edges(schedule: dict, weekday: int, clock: str, allowed: bool) -> None:
    hour, minute = (int(part) for part in clock.split(":"))
    when = datetime(2026, 11, 23 + weekday, hour, minute)  # 2026-11-23 is a Monday
    assert in_schedule(settings(schedule=schedule).schedule, when)[0] is allowed
