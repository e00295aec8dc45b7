"""The one settings root of Reverie.

Values come from, highest priority first: keyword arguments, environment variables
(``REVERIE_`` prefix, ``__`` between nested names, e.g. ``REVERIE_STREAM__BOOTSTRAP_SERVERS``),
then a TOML file (``reverie.toml`` in the working directory, or the file named by
``REVERIE_CONFIG``). Unknown keys are errors, in every source: a typo never silently does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from reverie.consolidator.config import (
    ConsolidationSettings,
    DaemonSettings,
    TrainSettings,
    TransferSettings,
)
from reverie.consolidator.gate import GateSettings
from reverie.memory.config import (
    BufferSettings,
    EmbedderSettings,
    RouterSettings,
    StreamSettings,
)
from reverie.memory.errors import ConfigError
from reverie.model.config import ModelSettings

__all__ = ["ENV_PREFIX", "Settings", "known_env_names", "load_settings"]

ENV_PREFIX = "REVERIE_"
CONFIG_ENV = "REVERIE_CONFIG"
DEFAULT_CONFIG_FILE = "reverie.toml"


class Settings(BaseSettings):
    """Everything configurable, in one validated tree."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(default=Path(".reverie"), description="All local state lives here.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="How serve and the daemon log: text lines, or one JSON object per line "
        "(ISO-8601 UTC time; a cycle's summary and a request's fields as keys).",
    )
    stream: StreamSettings = Field(
        default_factory=StreamSettings, description="The durable log: Kafka or embedded."
    )
    buffer: BufferSettings = Field(
        default_factory=BufferSettings, description="The short-term buffer's index."
    )
    embedder: EmbedderSettings = Field(
        default_factory=EmbedderSettings, description="The sentence embedder used for recall."
    )
    router: RouterSettings = Field(
        default_factory=RouterSettings, description="Which questions the adapter answers."
    )
    model: ModelSettings = Field(
        default_factory=ModelSettings, description="The base model and its prompt format."
    )
    transfer: TransferSettings = Field(
        default_factory=TransferSettings, description="How transfer sets are built."
    )
    train: TrainSettings = Field(
        default_factory=TrainSettings, description="The adapter and its training recipe."
    )
    consolidation: ConsolidationSettings = Field(
        default_factory=ConsolidationSettings,
        description="A cycle's size, anchors, replay, probes and retries.",
    )
    gate: GateSettings = Field(default_factory=GateSettings, description="Promotion thresholds.")
    daemon: DaemonSettings = Field(
        default_factory=DaemonSettings, description="When cycles run, and the daemon's endpoints."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def _known_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths = set()
    for name, info in model.model_fields.items():
        paths.add(prefix + name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= _known_paths(annotation, f"{prefix}{name}__")
    return paths


def known_env_names() -> set[str]:
    """Every environment variable the settings tree understands (plus ``REVERIE_CONFIG``)."""
    return {ENV_PREFIX + p.upper() for p in _known_paths(Settings)} | {CONFIG_ENV}


def _check_environment(environ: dict[str, str]) -> None:
    known = _known_paths(Settings)
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        path = key[len(ENV_PREFIX) :].lower()
        if path not in known:
            section = path.split("__")[0]
            hint = sorted(p for p in known if p.startswith(section + "__")) or sorted(
                p for p in known if "__" not in p
            )
            raise ConfigError(
                key,
                "unknown setting; known ones here: "
                + ", ".join(ENV_PREFIX + p.upper() for p in hint),
            )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raises :class:`ConfigError` naming the bad setting."""
    _check_environment(dict(os.environ))
    path = config_file or os.environ.get(CONFIG_ENV)
    if path is None and Path(DEFAULT_CONFIG_FILE).exists():
        path = DEFAULT_CONFIG_FILE
    if path is not None and not Path(path).is_file():
        raise ConfigError("config", f"config file {str(path)!r} does not exist")
    cls: type[Settings] = Settings
    if path is not None:
        # pydantic-settings reads the TOML path from the class config, hence a per-file subclass.
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": Path(path)})
        cls = type("Settings", (Settings,), {"model_config": config, "__module__": __name__})
    try:
        return cls(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(field, first["msg"]) from None
