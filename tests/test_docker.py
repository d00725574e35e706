"""Static checks of the production stack in docker/ (no Docker engine runs here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
ROOT = DOCKER.parent


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _env() -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def test_compose_names_every_service_with_pinned_images_and_defined_variables():
    compose = _compose()
    services = compose["services"]
    assert {
        "postgresql", "temporal-schema", "temporal", "temporal-namespace", "temporal-ui",
        "wfe-db-upgrade", "worker", "viewer",
    } <= set(services)  # fmt: skip
    env = _env()
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used - set(env) == set(), "variables used in compose.yaml but missing from .env"
    for name, service in services.items():
        image = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], service.get("image", ""))
        if image:
            assert "latest" not in image and ":" in image, f"{name}: image not pinned ({image})"
    for name in ("POSTGRESQL_VERSION", "TEMPORAL_VERSION", "TEMPORAL_UI_VERSION"):
        assert re.fullmatch(r"\d+(\.\d+)+", env[name]), name


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
