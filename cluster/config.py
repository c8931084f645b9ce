"""`ray_config.yaml`: the one file a user edits. Loaded into dataclasses and validated with errors naming the key.

Sections present today: `engine` (models, dtype, device, batch and context sizes, threads) and `speculation`
(default method and draft shape). Cluster placement (roles -> resources) joins with the Ray actors.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mirrorspec.orchestration.engine import EngineConfig
from mirrorspec.orchestration.errors import InvalidRequestError
from mirrorspec.orchestration.params import SpecParams

CONFIG_ENV = "MIRRORSPEC_CONFIG"
DEFAULT_CONFIG_NAME = "ray_config.yaml"


@dataclass
class ProjectConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    speculation: SpecParams = field(default_factory=SpecParams)


def _section(cls, data: object, name: str, source: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InvalidRequestError(f"{source}:{name}", "must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise InvalidRequestError(f"{source}:{name}.{key}", f"unknown key; known keys: {', '.join(known)}")
    return cls(**data)


def find_config(explicit: str | None = None) -> Path | None:
    """--config, else $MIRRORSPEC_CONFIG, else ./ray_config.yaml if present."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise InvalidRequestError("config", f"{explicit!r} does not exist")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        return find_config(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(path: Path | None) -> ProjectConfig:
    if path is None:
        return ProjectConfig()
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InvalidRequestError(source, f"is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(source, "must be a mapping of sections")
    sections = {"engine": EngineConfig, "speculation": SpecParams}
    for key in data:
        if key not in sections:
            raise InvalidRequestError(f"{source}:{key}", f"unknown section; known: {', '.join(sections)}")
    try:
        config = ProjectConfig(**{name: _section(cls, data.get(name), name, source) for name, cls in sections.items()})
    except TypeError as exc:
        raise InvalidRequestError(source, str(exc)) from None
    config.engine.validate()
    return config
