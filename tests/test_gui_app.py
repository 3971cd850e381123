"""The GUI against a real agent lending on a local swarm of the embedded model (offscreen Qt): each window
opens and shows the agent's answers; the tray menu's actions change the agent's state; the settings form
rejects a bad value next to its field and applies a good one without a restart; the welcome writes its choices.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gui_helpers
import pytest
from conftest import TEST_ENV

from agent.client import AgentApiError, AgentClient
from agent.service import Agent
from gui.app import NectarApp
from gui.settings_form import server_problems

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    root = tmp_path_factory.mktemp("agent")
    previous = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")  # start-at-login entries go here, not to the real desktop
    running = gui_helpers.start_lending_agent(root, TEST_ENV)
    client = AgentClient.connect(running.paths)
    gui_helpers.wait_for(lambda: client.swarm_map().uncovered == [] and client.swarm_map().num_blocks > 0, 240, "swarm")
    client.close()
    yield running
    running.close()
    if previous is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = previous


@pytest.fixture
def app(agent: Agent, qtbot) -> Iterator[NectarApp]:
    nectar = NectarApp(agent.paths, use_tray=True, poll_ms=300)
    nectar.start(welcome=False)
    try:
        qtbot.waitUntil(lambda: nectar.view.state == "lending", timeout=60000)
    except Exception:
        raise AssertionError(f"never lending: {nectar.view} {agent.state.status()}") from None
    yield nectar
    nectar.close()
    agent.state.resume()


def menu_texts(app: NectarApp) -> list[str]:
    app.tray.menu.aboutToShow.emit()
    return [action.text() for action in app.tray.menu.actions() if action.text()]


def test_tray_menu_is_rebuilt_from_the_state_and_its_actions_change_it(app: NectarApp, agent: Agent, qtbot) -> None:
    texts = menu_texts(app)
    assert texts[0].startswith("Lending: ")
    assert texts[2:] == ["Dashboard", "Chat", "Snooze", "Pause", "Settings...", "Quit Nectar"]
    assert "Lending" in app.tray.icon.toolTip() and agent.state.settings.swarm.model in texts[1]

    app.tray.action("Pause").trigger()
    qtbot.waitUntil(lambda: app.view.state == "paused" and agent.state.status().manual_pause, timeout=10000)
    assert "Resume" in menu_texts(app) and "Pause" not in menu_texts(app)
    assert app.tray.icon.toolTip().startswith("Nectar: Paused")

    app.tray.action("Resume").trigger()
    qtbot.waitUntil(lambda: app.view.state in ("lending", "starting") and not agent.state.status().manual_pause)

    app.tray.action("Snooze/1 hour").trigger()
    qtbot.waitUntil(lambda: app.view.state == "snoozed", timeout=10000)
    status = agent.state.status()
    assert status.snoozed_until is not None and status.snoozed_until - status.since == pytest.approx(3600, abs=5)
    assert "Resume" in menu_texts(app)
    app.tray.action("Resume").trigger()
    qtbot.waitUntil(lambda: agent.state.status().snoozed_until is None, timeout=10000)

    app.tray.action("Dashboard").trigger()
    assert app.windows["dashboard"].isVisible()
    app.tray.action("Settings").trigger()
    assert app.windows["settings"].isVisible()


def test_dashboard_shows_coverage_benchmark_contribution_and_logs(app: NectarApp, qtbot) -> None:
    dashboard = app.show_dashboard()
    # after the tray test's pause the server rejoins: the plot follows the swarm until every block is served again
    qtbot.waitUntil(
        lambda: (
            dashboard.coverage.map.num_blocks > 0
            and not dashboard.coverage.map.uncovered
            and any(server.ours for server in dashboard.coverage.map.servers)
        ),
        timeout=180000,
    )
    assert "every block is served" in dashboard.swarm_summary.text()
    qtbot.waitUntil(lambda: "tokens served" in dashboard.contribution_label.text(), timeout=10000)
    qtbot.waitUntil(lambda: "agent started" in dashboard.log_view.toPlainText(), timeout=10000)
    assert dashboard.benchmark_label.text()
    assert dashboard.state_title.text() == "Lending" and "blocks 0-29" in dashboard.state_detail.text()
    dashboard.grab()  # paints the plots (a painting error would raise here)


def test_settings_reject_a_bad_value_next_to_its_field_and_apply_a_good_one(
    app: NectarApp, agent: Agent, qtbot
) -> None:
    dialog = app.show_settings()
    qtbot.waitUntil(lambda: bool(dialog.form.loaded), timeout=10000)
    row = dialog.form.rows["schedule.every_day"]
    row.editor.setText("25:00-26:00")
    assert row.error.isVisibleTo(row) and "is not HH:MM-HH:MM" in row.error.text()
    dialog.save()
    assert "Fix the marked value" in dialog.result.text() and row.error.isVisible()  # its tab is shown
    assert agent.state.settings.schedule.every_day == "00:00-24:00"  # nothing was sent
    row.editor.setText("00:00-24:00")
    assert not row.error.isVisibleTo(row)

    dialog.form.rows["activity.idle_minutes"].editor.setValue(7.5)
    dialog.save()
    qtbot.waitUntil(lambda: agent.state.settings.activity.idle_minutes == 7.5, timeout=10000)
    qtbot.waitUntil(lambda: "Saved and applied" in dialog.result.text(), timeout=10000)
    assert "idle_minutes = 7.5" in agent.paths.config_file.read_text()

    # a value the agent refuses lands next to its field too (the agent's own words)
    with AgentClient.connect(agent.paths) as client, pytest.raises(AgentApiError) as refused:
        client.set_settings({"compute.threads_active": -3})
    problems = server_problems(str(refused.value))
    dialog.form.show_problems(problems)
    row = dialog.form.rows["compute.threads_active"]
    assert row.error.isVisibleTo(row) and "greater than or equal to 1" in row.error.text()

    secret_entry = dialog.secret_rows["hf_token"][1]
    secret_entry.setText("hf_gui_test_token")
    dialog._store_secret("hf_token")
    qtbot.waitUntil(lambda: agent.state.secret_store.get("hf_token") == "hf_gui_test_token", timeout=10000)
    qtbot.waitUntil(lambda: dialog.secret_rows["hf_token"][0].text().startswith("set;"), timeout=10000)
    assert secret_entry.text() == ""


def test_welcome_measures_then_writes_the_choices(app: NectarApp, agent: Agent, qtbot) -> None:
    from gui import autostart
    from gui.welcome import needs_welcome

    welcome = app.show_welcome()
    qtbot.waitUntil(lambda: welcome.measure.done, timeout=600000)
    assert "blocks 0 to 29" in welcome.measure.lend.text() or "as many blocks" in welcome.measure.lend.text()
    welcome.next()
    page = welcome.choices
    page.scheduled.setChecked(True)
    page.hours.setText("9 to 5")
    assert not page.validatePage() and "HH:MM-HH:MM" in page.error.text()
    page.always.setChecked(True)
    page.autostart.setChecked(True)
    assert page.validatePage()
    qtbot.waitUntil(lambda: agent.state.settings.activity.when_active == "reduced", timeout=10000)
    assert (
        autostart.enabled()
        and "Exec=" in Path(os.environ["XDG_CONFIG_HOME"], "autostart", "nectar.desktop").read_text()
    )
    assert not needs_welcome(agent.paths)
    autostart.set_enabled(False)
    assert not autostart.enabled()
