"""The throttle policy: a pure function from what the agent observes to how much it lends to others.

``decide(observations, settings, state) -> Decision(mode, reason, next_state)``. Reasons are checked in this
priority order; the first that applies names the mode, in the words the CLI, the tray and the dashboard show:

 1. paused by the owner (``nectar pause``), until resumed            -> paused
 2. snoozed, until the chosen time                                   -> paused
 3. on battery (``activity.pause_on_battery``)                        -> paused
 4. battery below ``activity.battery_min_percent``                    -> paused
 5. outside the weekly schedule                                      -> paused
 6. an exclusive program runs                                        -> paused
 7. other programs keep the GPU busy above the limit                 -> paused
 8. other programs use the CPU above the limit                       -> paused
 9. the owner's own request runs through this agent (chat, local API) -> full: it is never throttled
10. the owner is active and ``when_active`` is ``paused``            -> paused
11. the owner is active, but the server holds more memory than the in-use limit -> paused
12. the owner is active                                              -> reduced
13. idle time unknown (no activity source) -> ``activity.when_unknown``
14. the owner has been away ``idle_minutes``                          -> full

Stepping down is immediate. Hysteresis: after a policy pause (3-8) clears, the agent stays paused until it has
stayed clear for ``resume_after_seconds``, so a CPU spike or a flickering battery state does not flap the server.
The owner's own resume and the end of a snooze step up at once. The state is explicit (``ThrottleState``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from agent.settings import WEEKDAYS, ScheduleSettings, Settings, parse_windows

Mode = Literal["full", "reduced", "paused"]
POLICY_PAUSES = ("battery", "battery_low", "schedule", "exclusive", "gpu", "cpu")
_RANK = {"paused": 0, "reduced": 1, "full": 2}


@dataclass(frozen=True)
class Observations:
    """One snapshot of the machine; ``None`` means the source could not tell."""

    now: float  # unix time
    local_time: datetime  # wall clock for the schedule (naive, local)
    idle_seconds: float | None = None
    on_battery: bool | None = None
    battery_percent: float | None = None
    other_cpu_percent: float | None = None
    other_gpu_percent: float | None = None
    exclusive_program: str | None = None  # the name of one running exclusive program
    server_memory_gb: float | None = None
    owner_requests: int = 0  # the owner's own generations running through this agent now

    @classmethod
    def at(cls, now: float | None = None, **values: object) -> Observations:
        now = time.time() if now is None else now
        return cls(now=now, local_time=datetime.fromtimestamp(now), **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ThrottleState:
    mode: Mode = "paused"
    reason: str = "starting"
    since: float = 0.0
    kind: str = "start"  # which rule chose the mode (a key of POLICY_PAUSES, "manual", "active", "idle", ...)
    clear_since: float | None = None  # when the last policy pause reason cleared
    manual_pause: bool = False
    snoozed_until: float | None = None


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str
    next_state: ThrottleState


def decide(observations: Observations, settings: Settings, state: ThrottleState) -> Decision:
    """The mode and its reason for ``observations``; see the module docstring for the order."""
    now = observations.now
    snoozed_until = state.snoozed_until if state.snoozed_until is not None and now < state.snoozed_until else None
    state = dataclasses.replace(state, snoozed_until=snoozed_until)
    kind, mode, reason = _rule(observations, settings, state)

    clear_since = state.clear_since
    if kind in POLICY_PAUSES:
        clear_since = None
    elif state.kind in POLICY_PAUSES and _RANK[mode] > _RANK["paused"]:
        clear_since = now if clear_since is None else clear_since
        wait = settings.activity.resume_after_seconds - (now - clear_since)
        if wait > 0:  # hysteresis: hold the policy pause a little longer
            held = f"{state.reason.split(' (clear')[0]} (clear; resuming in {wait:.0f} s)"
            return _decision(state, "paused", held, state.kind, now, clear_since)
    return _decision(state, mode, reason, kind, now, clear_since if kind in POLICY_PAUSES else None)


def _decision(state: ThrottleState, mode: Mode, reason: str, kind: str, now: float, clear: float | None) -> Decision:
    since = state.since if mode == state.mode else now
    next_state = dataclasses.replace(state, mode=mode, reason=reason, since=since, kind=kind, clear_since=clear)
    return Decision(mode, reason, next_state)


def _rule(obs: Observations, settings: Settings, state: ThrottleState) -> tuple[str, Mode, str]:
    activity = settings.activity
    if state.manual_pause:
        return "manual", "paused", "paused by you (resume to lend again)"
    if state.snoozed_until is not None:
        until = datetime.fromtimestamp(state.snoozed_until).strftime("%H:%M")
        return "snooze", "paused", f"snoozed until {until}"
    if activity.pause_on_battery and obs.on_battery:
        return "battery", "paused", "on battery"
    if obs.battery_percent is not None and obs.battery_percent < activity.battery_min_percent:
        return "battery_low", "paused", f"battery at {obs.battery_percent:.0f}%, below {activity.battery_min_percent}%"
    allowed, hours = in_schedule(settings.schedule, obs.local_time)
    if not allowed:
        return "schedule", "paused", f"outside the schedule ({hours})"
    if obs.exclusive_program:
        return "exclusive", "paused", f"{obs.exclusive_program} is running"
    if obs.other_gpu_percent is not None and obs.other_gpu_percent > activity.other_gpu_percent_max:
        limit = activity.other_gpu_percent_max
        return "gpu", "paused", f"other programs use the GPU ({obs.other_gpu_percent:.0f}% > {limit:.0f}%)"
    if obs.other_cpu_percent is not None and obs.other_cpu_percent > activity.other_cpu_percent_max:
        limit = activity.other_cpu_percent_max
        return "cpu", "paused", f"other programs use the CPU ({obs.other_cpu_percent:.0f}% > {limit:.0f}%)"
    if obs.owner_requests > 0:
        return "owner", "full", "serving your own request"
    idle = obs.idle_seconds
    if idle is None:
        mode = activity.when_unknown
        return "unknown", mode, "idle time unknown on this machine (setting activity.when_unknown)"
    if idle < activity.idle_minutes * 60:
        if activity.when_active == "paused":
            return "active", "paused", "you are using the computer"
        limit = settings.compute.memory_active_gb
        if limit and obs.server_memory_gb is not None and obs.server_memory_gb > limit:
            gb = obs.server_memory_gb
            return "active_memory", "paused", f"you are using the computer; the server holds {gb:.1f} GiB > {limit:g}"
        return "active", "reduced", "you are using the computer"
    return "idle", "full", f"you have been away for {idle / 60:.0f} min"


def in_schedule(schedule: ScheduleSettings, local_time: datetime) -> tuple[bool, str]:
    """Whether ``local_time`` falls in the weekly schedule, and that day's hours as text.

    A window that passes midnight (22:00-07:00) belongs to the day it starts: Sunday's 22:00-07:00 covers
    Monday 03:00 (the week wraps).
    """
    today = local_time.weekday()
    minute = local_time.hour * 60 + local_time.minute
    for window_start, window_end in _windows(schedule, today):
        if window_start < window_end and window_start <= minute < window_end:
            return True, _hours(schedule, today)
        if window_end < window_start and minute >= window_start:
            return True, _hours(schedule, today)
    yesterday = (local_time - timedelta(days=1)).weekday()
    for window_start, window_end in _windows(schedule, yesterday):
        if window_end < window_start and minute < window_end:
            return True, _hours(schedule, yesterday)
    return False, _hours(schedule, today)


def _windows(schedule: ScheduleSettings, weekday: int) -> list[tuple[int, int]]:
    return parse_windows(_day_text(schedule, weekday))


def _day_text(schedule: ScheduleSettings, weekday: int) -> str:
    return getattr(schedule, WEEKDAYS[weekday]) or schedule.every_day


def _hours(schedule: ScheduleSettings, weekday: int) -> str:
    text = _day_text(schedule, weekday).strip() or "off"
    return f"{WEEKDAYS[weekday].capitalize()}: {text}"
