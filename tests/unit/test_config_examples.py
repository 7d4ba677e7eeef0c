"""Every example under config/ is a valid gateway file (DESIGN.md §1: each passes validate).

Only ``config/*.yaml`` are gateway files; subfolders (config/kubernetes, ...) hold other
tools' files and are not looked at. The list is a glob so a new example is checked without
touching this test, and an empty folder fails rather than passing vacuously.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml

from gateway.config import model
from gateway.config.loader import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))

# Dataclasses written as one scalar in YAML ("host:port", a URL, a "name: value" pair).
_SCALARS = (model.ListenAddress, model.Target, model.HeaderMatch, model.Rate)


def test_config_folder_has_examples() -> None:
    assert EXAMPLES, f"no *.yaml example in {CONFIG_DIR}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    # An empty environment: examples must not depend on the machine they are checked on
    # (interpolations in them carry defaults).
    load_config(path, environ={})


def _missing_keys(cls: type[object], written: object, where: str) -> list[str]:
    """Keys of the dataclass ``cls`` (recursively) that ``written`` does not spell out."""
    assert isinstance(written, dict), where
    if True in written:
        # YAML 1.1 reads a bare `on:` key as true; the loader takes it back (retries.on).
        written = {("on" if key is True else key): value for key, value in written.items()}
    hints = typing.get_type_hints(cls)
    missing = []
    for field in fields(cls):  # type: ignore[arg-type]
        if field.name == "name" and cls is model.UpstreamConfig:
            continue  # an upstream's name is its key under `upstreams`
        path = f"{where}.{field.name}" if where else field.name
        if field.name not in written:
            missing.append(path)
            continue
        kind = hints[field.name]
        # An optional section (`rate_limit: X | None`) written as a mapping is checked too.
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(options) == 1 and isinstance(written[field.name], dict):
            kind = options[0]
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None
        if isinstance(item, type) and is_dataclass(item) and not issubclass(item, _SCALARS):
            # A list of sections (server.listeners): its first item shows every key.
            if written[field.name]:
                missing += _missing_keys(item, written[field.name][0], f"{path}[0]")
        elif is_dataclass(kind) and not issubclass(kind, _SCALARS):  # type: ignore[arg-type]
            missing += _missing_keys(kind, written[field.name], path)  # type: ignore[arg-type]
    return missing


def test_complete_example_shows_every_key() -> None:
    doc = yaml.safe_load((CONFIG_DIR / "gateway.yaml").read_text(encoding="utf-8"))
    top = {key: doc[key] for key in ("server", "admin", "logging", "redis", "cache") if key in doc}
    missing = _missing_keys(model.GatewayConfig, {**top, "upstreams": {}, "routes": []}, "")
    missing += _missing_keys(
        model.UpstreamConfig, next(iter(doc["upstreams"].values())), "upstreams.*"
    )
    missing += _missing_keys(model.RouteConfig, doc["routes"][0], "routes[0]")
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_carry_no_secrets(path: Path) -> None:
    # A token in an example would be copied into deployments: they read it from the
    # environment, and without it the admin listener stays where no token is needed.
    assert load_config(path, environ={}).admin.token is None


def test_complete_example_reads_the_admin_token_from_the_environment() -> None:
    token = "0123456789abcdef-example"
    path = CONFIG_DIR / "gateway.yaml"
    assert load_config(path, environ={"GATEWAY_ADMIN_TOKEN": token}).admin.token == token
    assert load_config(path, environ={"GATEWAY_ADMIN_TOKEN": ""}).admin.token is None
