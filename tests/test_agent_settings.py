"""Settings declared once: the file made from the declaration, validation naming key and value, unknown keys
reported, comments kept on edit, NECTAR_HOME moving every directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.paths import AgentPaths
from agent.settings import Settings, iter_settings, parse_windows
from agent.settings_file import SettingsError, SettingsFile


def test_every_setting_has_help_and_a_group_and_the_defaults_validate() -> None:
    infos = list(iter_settings())
    assert len({info.key for info in infos}) == len(infos) > 30
    assert all(info.help and info.group_title for info in infos)
    threads = next(info for info in infos if info.key == "compute.threads_active")
    assert (threads.kind, threads.unit, threads.minimum, threads.maximum) == ("int", "threads", 1, 1024)
    when = next(info for info in infos if info.key == "activity.when_active")
    assert when.kind == "choice" and when.choices == ("reduced", "paused")
    assert Settings().flat() == {info.key: info.default for info in infos}


def test_first_load_writes_a_commented_file_with_every_setting(tmp_path: Path) -> None:
    file = SettingsFile(tmp_path / "nectar.toml")
    loaded = file.load()
    assert loaded.settings == Settings() and loaded.warnings == []
    text = file.path.read_text()
    for info in iter_settings():
        assert f"\n{info.name} = " in text
    assert "# compute threads while the owner is active" in text


def test_set_keeps_comments_and_other_values(tmp_path: Path) -> None:
    file = SettingsFile(tmp_path / "nectar.toml")
    file.load()
    file.path.write_text(file.path.read_text().replace("[activity]", "[activity]\n# my own note"))
    file.set("activity.idle_minutes", "7.5")
    file.set("activity.exclusive_programs", "steam, blender")
    file.set("activity.pause_on_battery", "no")
    text = file.path.read_text()
    assert "# my own note" in text and "idle_minutes = 7.5" in text
    settings = file.load().settings
    assert settings.activity.exclusive_programs == ["steam", "blender"]
    assert settings.activity.pause_on_battery is False and settings.activity.idle_minutes == 7.5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("compute.threads_active", "many", 'compute.threads_active = "many"'),
        ("compute.threads_active", "0", "greater than or equal to 1"),
        ("activity.when_active", "sometimes", "'reduced' or 'paused'"),
        ("schedule.monday", "9-17", "'9-17' is not HH:MM-HH:MM"),
        ("activity.pause_on_battery", "maybe", "expected true or false"),
    ],
)
def test_bad_values_are_refused_with_key_and_value_and_nothing_is_written(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    file = SettingsFile(tmp_path / "nectar.toml")
    file.load()
    before = file.path.read_text()
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")) as error:
        file.set(key, value)
    assert key in str(error.value)
    assert file.path.read_text() == before


def test_unknown_and_bad_keys_in_the_file(tmp_path: Path) -> None:
    file = SettingsFile(tmp_path / "nectar.toml")
    file.path.write_text('[compute]\nthreads_active = 2\nthreds_idle = 4\n[gui]\ntheme = "dark"\n')
    loaded = file.load()
    assert loaded.settings.compute.threads_active == 2
    assert any("compute.threds_idle" in warning for warning in loaded.warnings)
    assert any("'gui'" in warning for warning in loaded.warnings)
    file.path.write_text('[compute]\nthreads_active = "two"\n')
    with pytest.raises(SettingsError, match=r"nectar.toml: compute.threads_active = \"two\""):
        file.load()
    file.path.write_text("[compute\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        file.load()
    with pytest.raises(KeyError, match="unknown setting 'compute.nope'"):
        file.set("compute.nope", "1")


def test_schedule_windows() -> None:
    assert parse_windows("09:00-12:00, 22:00-07:00") == [(540, 720), (1320, 420)]
    assert parse_windows("off") == [] and parse_windows("00:00-24:00") == [(0, 1440)]
    for bad in ("25:00-26:00", "10:00-10:00", "nine to five"):
        with pytest.raises(ValueError):
            parse_windows(bad)


def test_nectar_home_moves_every_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NECTAR_HOME", str(tmp_path))
    paths = AgentPaths.default()
    for directory in (paths.config_dir, paths.data_dir, paths.cache_dir, paths.log_dir):
        assert directory.is_relative_to(tmp_path)
    monkeypatch.delenv("NECTAR_HOME")
    assert not AgentPaths.default().config_dir.is_relative_to(tmp_path)
