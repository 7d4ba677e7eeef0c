"""Every example under config/ is a valid gateway file (DESIGN.md §1: each passes validate).

Only ``config/*.yaml`` are gateway files; subfolders (config/kubernetes, ...) hold other
tools' files and are not looked at. The list is a glob so a new example is checked without
touching this test, and an empty folder fails rather than passing vacuously.

An example with TLS listeners names certificate files that are not in the repository (no key
material is committed): it is checked as a copy in a temporary folder, with certificates made
at the paths it names. An example without TLS is checked where it is.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml

from gateway.config import model
from gateway.config.loader import load_config
from tests.unit.tls_files import write_certificate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))

# Dataclasses written as one scalar in YAML ("host:port", a URL, a "name: value" pair).
_SCALARS = (model.ListenAddress, model.Target, model.HeaderMatch, model.Rate)


def test_config_folder_has_examples() -> None:
    assert EXAMPLES, f"no *.yaml example in {CONFIG_DIR}"


def _certificate_files(doc: object) -> list[tuple[str, str]]:
    """The (cert, key) paths every TLS listener of a parsed example names, SNI ones too."""
    server = doc.get("server") if isinstance(doc, dict) else None
    listeners = server.get("listeners") if isinstance(server, dict) else None
    pairs = []
    for listener in listeners if isinstance(listeners, list) else []:
        tls = listener.get("tls")
        if isinstance(tls, dict):
            pairs += [(tls["cert"], tls["key"])]
            pairs += [(entry["cert"], entry["key"]) for entry in tls.get("sni") or []]
    return pairs


def _load_example(
    path: Path, tmp_path: Path, environ: dict[str, str] | None = None
) -> model.GatewayConfig:
    # An empty environment: examples must not depend on the machine they are checked on
    # (interpolations in them carry defaults).
    environ = {} if environ is None else environ
    text = path.read_text(encoding="utf-8")
    pairs = _certificate_files(yaml.safe_load(text))
    if not pairs:
        return load_config(path, environ)
    for cert, key in pairs:
        # Relative to the example, like any config file's paths, so the copy finds its own.
        assert not Path(cert).is_absolute(), cert
        assert not Path(key).is_absolute(), key
        write_certificate(tmp_path, cert, key)
    copy = tmp_path / path.name
    copy.write_text(text, encoding="utf-8")
    return load_config(copy, environ)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path, tmp_path: Path) -> None:
    _load_example(path, tmp_path)


def test_the_complete_example_needs_no_certificate_files() -> None:
    # gateway.yaml is the file people start from (and `make demo` and the image ship it): it
    # must validate in a bare checkout, so its TLS keys are shown in comments and in tls.yaml.
    assert _certificate_files(yaml.safe_load((CONFIG_DIR / "gateway.yaml").read_text())) == []


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
        if cls is model.TlsConfig and field.name == "default":
            # The default certificate is written as tls.cert and tls.key.
            missing += [f"{where}.{key}" for key in ("cert", "key") if key not in written]
            continue
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
    # gateway.yaml's listener has `tls: null` (it must load without certificate files): the
    # TLS keys are shown by tls.yaml's first listener.
    tls = yaml.safe_load((CONFIG_DIR / "tls.yaml").read_text(encoding="utf-8"))
    tls_block = tls["server"]["listeners"][0]["tls"]
    missing += _missing_keys(model.TlsConfig, tls_block, "tls.yaml: server.listeners[0].tls")
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_carry_no_secrets(path: Path, tmp_path: Path) -> None:
    # A token in an example would be copied into deployments: they read it from the
    # environment, and without it the admin listener stays where no token is needed.
    assert _load_example(path, tmp_path).admin.token is None


def test_complete_example_reads_the_admin_token_from_the_environment() -> None:
    token = "0123456789abcdef-example"
    path = CONFIG_DIR / "gateway.yaml"
    assert load_config(path, environ={"GATEWAY_ADMIN_TOKEN": token}).admin.token == token
    assert load_config(path, environ={"GATEWAY_ADMIN_TOKEN": ""}).admin.token is None
