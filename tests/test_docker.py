"""Static checks of the production stack in docker/ (no Docker engine runs here).

``docker/compose.yaml`` is validated against the Compose Specification's own JSON schema
(vendored in tests/data, see its README) after interpolating ``${VAR}`` as Compose does; what a
schema cannot see is checked besides: every variable is set in ``docker/.env`` or required with
``:?``, secrets have no defaults, every port is bound to loopback, every ``depends_on`` exists.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
ROOT = DOCKER.parent
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
SECRETS = {"POSTGRES_PASSWORD": "pw-from-the-shell", "WFE_API_TOKENS": "ops:tok-from-the-shell"}

# Compose's interpolation: $$ (a literal $), $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+alternative}, ${VAR+alternative}.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<plain>[A-Za-z_]\w*)|\{(?P<name>[A-Za-z_]\w*)"
    r"(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\})"
)


class MissingVariableError(Exception):
    """What ``docker compose`` reports for an unset ``${VAR:?message}``."""


def _uses(text: str) -> list[tuple[str, str | None]]:
    """Every variable reference in ``text``: (name, operator or None)."""
    found = []
    for match in _VARIABLE.finditer(text):
        if match.group("escaped"):
            continue
        found.append((match.group("plain") or match.group("name"), match.group("operator")))
    return found


def _interpolate(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("plain") or match.group("name")
        operator, argument = match.group("operator"), match.group("argument") or ""
        value = values.get(name)
        empty = value is None or (value == "" and operator is not None and operator[0] == ":")
        if operator in (":?", "?") and empty:
            raise MissingVariableError(f"required variable {name} is missing a value: {argument}")
        if operator in (":-", "-") and empty:
            return argument
        if operator in (":+", "+"):
            return "" if empty else argument
        return value or ""

    return _VARIABLE.sub(replace, text)


def _text() -> str:
    return (DOCKER / "compose.yaml").read_text()


def _compose() -> dict[str, Any]:
    return yaml.safe_load(_text())


def _env() -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def _resolved(extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose config`` would read it: .env, then the shell."""
    values = {**_env(), **(extra if extra is not None else SECRETS)}
    return yaml.safe_load(_interpolate(_text(), values))


def test_compose_file_is_valid_under_the_compose_specification_schema():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for document in (_compose(), _resolved()):
        problems = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert problems == [], [f"{list(p.absolute_path)}: {p.message}" for p in problems]
    # The schema does catch mistakes: a misspelt key and a wrong type fail.
    broken = _resolved()
    broken["services"]["viewer"]["restart_policy"] = "always"
    broken["services"]["worker"]["stop_grace_period"] = {"seconds": 60}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_variable_is_set_in_env_or_required_and_secrets_have_no_default():
    env = _env()
    uses = _uses(_text())
    assert uses, "no variables found: the pattern is wrong"
    for name, operator in uses:
        assert env.get(name) or operator in (":?", "?"), (
            f"${{{name}}} is neither set in docker/.env nor required with :?"
        )
    for secret in SECRETS:
        assert secret not in env, f"{secret} must not have a default in docker/.env"
        assert {op for name, op in uses if name == secret} == {":?"}, secret
    assert "WFE_API_TOKEN" not in env  # the older single shared token is gone from the stack
    everything = "\n".join(p.read_text() for p in DOCKER.rglob("*") if p.is_file())
    assert "change-me" not in everything
    # Without the secrets compose refuses to start, naming what is missing.
    for missing in SECRETS:
        given = {k: v for k, v in SECRETS.items() if k != missing}
        with pytest.raises(MissingVariableError, match=missing):
            _resolved(given)
    assert _interpolate("$${X} ${A:-d} ${B:+alt}", {"B": "1"}) == "${X} d alt"


def test_every_published_port_is_bound_to_loopback():
    services = _resolved()["services"]
    published = {
        name: [str(port) for port in service.get("ports", [])]
        for name, service in services.items()
        if service.get("ports")
    }
    assert set(published) == {"postgresql", "temporal", "temporal-ui", "viewer"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
    raw = _compose()["services"]
    assert raw["temporal"]["ports"] == ["${TEMPORAL_BIND}:${TEMPORAL_PORT}:7233"]
    assert raw["temporal-ui"]["ports"] == ["${TEMPORAL_BIND}:${TEMPORAL_UI_PORT}:8080"]
    viewer = raw["viewer"]
    assert viewer["environment"]["WFE_API_TOKENS"].startswith("${WFE_API_TOKENS:?")
    assert "/healthz" in " ".join(viewer["healthcheck"]["test"])


def test_compose_names_every_service_with_pinned_images_and_defined_variables():
    compose = _compose()
    services = compose["services"]
    assert {
        "postgresql", "temporal-schema", "temporal", "temporal-namespace", "temporal-ui",
        "wfe-db-upgrade", "worker", "viewer",
    } <= set(services)  # fmt: skip
    env = _env()
    for name, service in services.items():
        image = _interpolate(service.get("image", ""), env)
        if image:
            assert "latest" not in image and ":" in image, f"{name}: image not pinned ({image})"
    for name in ("POSTGRESQL_VERSION", "TEMPORAL_VERSION", "TEMPORAL_UI_VERSION"):
        assert re.fullmatch(r"\d+(\.\d+)+", env[name]), name


def test_the_readme_has_a_threat_model():
    readme = (DOCKER / "README.md").read_text()
    section = readme[readme.index("## Threat model") :]
    for topic in (
        "127.0.0.1",
        "TLS",
        "proxy",
        "WFE_API_TOKENS",
        "Temporal UI",
        "POSTGRES_PASSWORD",
    ):
        assert topic in section, topic


def test_every_healthy_dependency_has_a_healthcheck_and_ports_are_published():
    services = _compose()["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} lacks a healthcheck"
    published = " ".join(
        str(port) for service in services.values() for port in service.get("ports", [])
    )
    for variable in ("POSTGRES_PORT", "TEMPORAL_PORT", "TEMPORAL_UI_PORT", "VIEWER_PORT"):
        assert f"${{{variable}}}" in published, variable


def test_the_image_installs_the_same_package_the_readme_installs():
    dockerfile = (DOCKER / "worker.Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        folder = package.rstrip("*")
        assert f"COPY {folder} ./{folder}" in dockerfile, f"the image lacks {folder}/"
    assert "COPY pyproject.toml" in dockerfile and "pip install ." in dockerfile
    assert 'ENTRYPOINT ["wfe"]' in dockerfile
    assert project["project"]["scripts"]["wfe"] == "engine.cli:main"
    readme = (DOCKER / "README.md").read_text()
    assert "docker compose" in readme and "scale" in readme
