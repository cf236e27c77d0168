"""Readers of deploy/ shared by the tests: Dockerfile instructions, the Compose files and compose's interpolation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER_DIR = DEPLOY / "docker"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GPU_FILE = DEPLOY / "docker-compose.gpu.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def dockerfile(name: str) -> Path:
    return DOCKER_DIR / f"{name}.Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined and comments dropped."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        parsed.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, f"{path.name}: a continuation line ends the file"
    return parsed


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM are left out)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def values(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for kw, arguments in stage if kw == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV of a stage (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for arguments in values(stage, "ENV"):
        for pair in arguments.split():
            key, sep, value = pair.partition("=")
            assert sep, f"ENV {arguments!r}: use the KEY=value form"
            env[key] = value
    return env


def arg_defaults(path: Path) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, arguments in instructions(path):
        if keyword == "ARG" and "=" in arguments:
            key, _, value = arguments.partition("=")
            defaults[key] = value
    return defaults


def load(path: Path) -> dict:
    # PyYAML resolves the `<<` merge keys; compose does the same.
    return yaml.safe_load(path.read_text())


def env_example() -> dict[str, str]:
    entries = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in entries}


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} over a parsed file, with `env` as deploy/.env."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator and operator.endswith("?"):
            raise AssertionError(f"{name} is required: {argument}")
        return argument if operator else ""

    return VARIABLE.sub(replace, value)


def resolved_compose() -> dict:
    """docker-compose.yml as compose runs it with deploy/.env copied from .env.example."""
    return interpolate(load(COMPOSE_FILE), env_example())


def dashboard_variables() -> set[str]:
    """The environment variables the dashboard's settings loader reads (the names quoted in settings.py)."""
    source = (ROOT / "services" / "dashboard" / "src" / "trainingplatform_dashboard" / "settings.py").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9]*_[A-Z0-9_]+)"', source))


def healthcheck_command(path: Path) -> list[str]:
    """The exec form of a Dockerfile's HEALTHCHECK CMD, as a list."""
    (healthcheck,) = [arguments for keyword, arguments in instructions(path) if keyword == "HEALTHCHECK"]
    return json.loads(healthcheck.partition(" CMD ")[2])


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {key: "" if value is None else str(value) for key, value in env.items()}
