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

from agent.api.models import SettingsChange
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


def streaming_text(chat) -> str:
    """The text of the answer being streamed, or of the error that replaced it."""
    from gui.chat.message_view import MessageView

    view = chat.findChild(MessageView, "message-streaming")
    return view.body.toPlainText() if view is not None else ""


def message_view(chat, message_id: int):
    from gui.chat.message_view import MessageView

    return chat.findChild(MessageView, f"message-{message_id}")


def test_chat_streams_token_by_token_regenerates_a_branch_and_stops(app: NectarApp, qtbot, tmp_path: Path) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from gui.chat.branches import position

    chat = app.show_chat()
    grew: list[str] = []
    finished: list[object] = []
    chat.answer_grew.connect(grew.append)
    chat.answer_finished.connect(finished.append)
    chat.parameters.max_tokens.setValue(24)
    chat.composer.setPlainText("Name three colours.")
    QTest.keyClick(chat.composer, Qt.Key.Key_Return)  # Enter sends
    qtbot.waitUntil(lambda: bool(finished), timeout=300000)
    conversation = finished[-1]
    assert conversation is not None, streaming_text(chat)
    assert len(grew) >= 3 and all(
        later.startswith(earlier) and later != earlier for earlier, later in zip(grew, grew[1:], strict=False)
    )
    answer = conversation.path()[-1]
    assert answer.role == "assistant" and answer.content == grew[-1]
    assert answer.meta.tokens_per_second and answer.meta.time_to_first_token is not None and answer.meta.route
    footer = message_view(chat, answer.id).footer.text()
    assert "tokens/s" in footer and "first token" in footer and "route: blocks 0-29 on" in footer

    finished.clear()
    message_view(chat, answer.id).regenerate_button.click()
    qtbot.waitUntil(lambda: bool(finished), timeout=300000)
    regenerated = finished[-1].path()[-1]
    assert regenerated.id != answer.id and regenerated.parent_id == answer.parent_id
    assert position(finished[-1], regenerated.id) == (2, 2)
    assert message_view(chat, regenerated.id).branch_label.text() == "2/2"
    message_view(chat, regenerated.id).previous.click()  # back to the first answer
    qtbot.waitUntil(lambda: chat.conversation.current_id == answer.id, timeout=10000)
    assert message_view(chat, answer.id).branch_label.text() == "1/2"

    chat.parameters.max_tokens.setValue(400)
    chat._parameters_changed()
    qtbot.waitUntil(lambda: chat.conversation.sampling.max_tokens == 400, timeout=10000)
    grew.clear()
    finished.clear()
    chat.composer.setPlainText("Tell me a long story about a bee who learns to fly.")
    chat.send_button.click()
    qtbot.waitUntil(lambda: len(grew) >= 2, timeout=300000)
    assert chat.send_button.text() == "Stop"  # Stop replaces Send while an answer streams
    QTest.keyClick(chat.composer, Qt.Key.Key_Escape)  # Esc stops
    at_stop = len(grew)
    qtbot.waitUntil(lambda: bool(finished), timeout=30000)
    stopped = finished[-1].path()[-1]
    assert stopped.meta.finish_reason == "cancelled" and len(grew) <= at_stop + 2
    assert chat.send_button.text() == "Send"

    chat.export("markdown", tmp_path / "chat.md")
    chat.export("json", tmp_path / "chat.json")
    qtbot.waitUntil(lambda: (tmp_path / "chat.md").exists() and (tmp_path / "chat.json").exists(), timeout=10000)
    assert "## User" in (tmp_path / "chat.md").read_text() and '"nectar_export"' in (tmp_path / "chat.json").read_text()

    conversation_id = chat.conversation.id
    chat.rename(conversation_id, "Bees and colours")
    qtbot.waitUntil(lambda: chat.sidebar.items.count() and chat.sidebar.items.item(0).text() == "Bees and colours")
    chat.sidebar.search.setText("bee who learns")
    qtbot.waitUntil(lambda: chat.sidebar.ids() == [conversation_id], timeout=10000)
    chat.sidebar.search.setText("no such words anywhere")
    qtbot.waitUntil(lambda: chat.sidebar.ids() == [], timeout=10000)
    chat.sidebar.search.clear()
    chat.delete(conversation_id, confirm=False)
    qtbot.waitUntil(lambda: conversation_id not in chat.sidebar.ids() and chat.conversation is None, timeout=10000)


def test_chat_names_the_missing_blocks_when_the_swarm_cannot_serve(app: NectarApp, agent: Agent, qtbot) -> None:
    agent.state.set_settings(SettingsChange(changes={"chat.wait_seconds": 5.0}))  # fail soon once blocks are missing
    app.pause()  # the agent's server drains: nobody serves the model's blocks
    qtbot.waitUntil(lambda: agent.state.status().server.state == "stopped", timeout=120000)
    chat = app.show_chat()
    finished: list[object] = []
    chat.answer_finished.connect(finished.append)
    chat.send("Hello?")
    qtbot.waitUntil(lambda: bool(finished), timeout=120000)
    assert finished[-1] is None
    text = streaming_text(chat)
    assert "block" in text and "0" in text, text
    chat.check_models()
    qtbot.waitUntil(lambda: chat.banner.isVisible() and "block" in chat.banner.text(), timeout=30000)
