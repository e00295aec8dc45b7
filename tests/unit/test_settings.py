from __future__ import annotations

from pathlib import Path

import pytest

from reverie.memory.errors import ConfigError
from reverie.settings import load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.data_dir == Path(".reverie")
    assert s.stream.bootstrap_servers is None


def test_env_nested_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text('data_dir = "/from/toml"\n[stream]\npartitions = 2\ntopic = "t.toml"\n')
    monkeypatch.setenv("REVERIE_STREAM__PARTITIONS", "8")
    s = load_settings(config)
    assert s.stream.partitions == 8  # env beats the file
    assert s.stream.topic == "t.toml"
    assert s.data_dir == Path("/from/toml")
    assert load_settings(config, data_dir="/kw").data_dir == Path("/kw")  # keywords beat all


def test_config_from_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text("[buffer]\nhnsw_threshold = 7\n")
    monkeypatch.setenv("REVERIE_CONFIG", str(config))
    assert load_settings().buffer.hnsw_threshold == 7


@pytest.mark.parametrize(
    ("env", "toml", "field"),
    [
        ({"REVERIE_STREM__TOPIC": "x"}, "", "REVERIE_STREM__TOPIC"),
        ({"REVERIE_STREAM__TOPICS": "x"}, "", "REVERIE_STREAM__TOPICS"),
        ({}, "[stream]\ntopics = 'x'\n", "stream.topics"),
        ({}, "colour = 'red'\n", "colour"),
        ({"REVERIE_BUFFER__INDEX": "ivf"}, "", "buffer.index"),
    ],
)
def test_unknown_or_invalid_settings_are_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], toml: str, field: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = tmp_path / "r.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert info.value.field == field


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/reverie.toml")


def test_every_setting_has_a_description() -> None:
    """`reverie --help`-style docs and error hints read the descriptions: none may be missing."""
    from pydantic import BaseModel

    from reverie.settings import Settings

    def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            if not info.description:
                out.append(prefix + name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                out += undocumented(info.annotation, f"{prefix}{name}.")
        return out

    assert undocumented(Settings) == []
