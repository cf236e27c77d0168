"""The Kubernetes manifests of deploy/k8s, checked offline.

1. Every resource file of the base and the overlays is validated against the Kubernetes API schemas bundled with
   kubernetes-validate (strict: an unknown field is an error), for the oldest and newest versions we support.
2. Every kustomization is checked in Python: its resources, patches and generator files exist, each patch targets a
   resource of the build, each Secret and ConfigMap a pod refers to is generated, with the keys it needs.
3. Each overlay is rendered by a real kustomize, when one is on the machine: a standalone `kustomize`, else the one
   built into `kubectl` (`kubectl kustomize` works offline, with no cluster). The rendered objects are validated
   again and checked for what each environment promises. Without either tool these tests are skipped, with the
   reason printed; 1 and 2 still run.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_files import dashboard_variables
from trainingplatform_backend import settings as backend_settings
from trainingplatform_dashboard import settings as dashboard_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("local", "production")
# grpc probes are GA from 1.27; 1.37 is the newest schema kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
SERVICE_PORTS = {"backend": 50051, "trainer-timm": 50061, "trainer-ultralytics": 50062}
SECRET_NAME = "trainingplatform-secrets"
TRAINER_CANCEL_GRACE_S = 30  # TP_CANCEL_GRACE_S default; docs/trainer_service.md asks for it + 15 s on SIGTERM


def read_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> dict:
    return read_yaml(directory / "kustomization.yaml")[0]


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def resource_files(directory: Path) -> Iterator[Path]:
    """The resource files of a kustomization and of every kustomization it includes."""
    for entry in kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            yield from resource_files(path)
        else:
            yield path


def build_resources(directory: Path) -> list[dict]:
    return [doc for path in resource_files(directory) for doc in read_yaml(path)]


def env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def generator_file(directory: Path, name: str) -> Path:
    """A generator's env file; a secrets file kept out of git is represented by its committed `.example`."""
    path = directory / name
    if not path.exists() and (directory / f"{name}.example").exists():
        return directory / f"{name}.example"
    return path


def pod_specs(resources: list[dict]) -> Iterator[tuple[str, dict]]:
    for resource in resources:
        if resource["kind"] in ("Deployment", "StatefulSet"):
            yield resource["metadata"]["name"], resource["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


# --- 1. every resource file against the API schemas ------------------------------------------------------------


def all_resource_files() -> list[Path]:
    files = {path for directory in kustomizations() for path in resource_files(directory)}
    return sorted(files)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", all_resource_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_resource_file_validates_against_the_api_schema(path: Path, version: str):
    for document in read_yaml(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_validation_is_not_vacuous():
    (deployment,) = [d for d in read_yaml(BASE / "backend.yaml") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# --- 2. the kustomizations, in Python ----------------------------------------------------------------------------


def test_the_base_and_both_overlays_exist():
    assert [p.relative_to(K8S).as_posix() for p in kustomizations()] == [
        "base",
        "overlays/local",
        "overlays/production",
    ]


@pytest.mark.parametrize("directory", kustomizations(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_kustomization_references_exist(directory: Path):
    config = kustomization(directory)
    for entry in config.get("resources", []):
        path = directory / entry
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"resource {entry} does not exist"
    for patch in config.get("patches", []):
        assert (directory / patch["path"]).is_file(), f"patch {patch['path']} does not exist"
    for generator in config.get("configMapGenerator", []) + config.get("secretGenerator", []):
        for name in generator.get("envs", []):
            assert generator_file(directory, name).is_file(), f"{generator['name']}: {name} does not exist"


def patch_targets(directory: Path, patch: dict, resources: list[dict]) -> list[dict]:
    document = read_yaml(directory / patch["path"])[0]
    target = patch.get("target") or {"kind": document["kind"], "name": document["metadata"]["name"]}
    selector = dict(pair.split("=") for pair in target.get("labelSelector", "").split(",") if pair)
    return [
        r
        for r in resources
        if r["kind"] == target["kind"]
        and target.get("name", r["metadata"]["name"]) == r["metadata"]["name"]
        and selector.items() <= r["metadata"].get("labels", {}).items()
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_patches_target_resources_of_the_build(overlay: str):
    directory = K8S / "overlays" / overlay
    resources = build_resources(directory)
    for patch in kustomization(directory).get("patches", []):
        targets = patch_targets(directory, patch, resources)
        assert targets, f"{patch['path']} matches no resource"
        # A strategic merge patch merges containers by name: the names it lists must be there.
        document = read_yaml(directory / patch["path"])[0]
        names = {c["name"] for c in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])}
        for target in targets if names else []:
            assert names <= {c["name"] for c in target["spec"]["template"]["spec"]["containers"]}, patch["path"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_replicas_name_what_the_build_has(overlay: str):
    directory = K8S / "overlays" / overlay
    config = kustomization(directory)
    resources = build_resources(directory)
    images = {c["image"].split(":")[0] for _, spec in pod_specs(resources) for c in containers(spec)}
    for image in config.get("images", []):
        assert image["name"] in images, image["name"]
    names = {r["metadata"]["name"] for r in resources if r["kind"] in ("Deployment", "StatefulSet")}
    for replica in config.get("replicas", []):
        assert replica["name"] in names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_secret_key_and_config_map_is_generated(overlay: str):
    directory = K8S / "overlays" / overlay
    chain = [BASE, directory]
    generated_maps = {g["name"] for d in chain for g in kustomization(d).get("configMapGenerator", [])}
    (secret,) = [g for g in kustomization(directory)["secretGenerator"] if g["name"] == SECRET_NAME]
    secret_keys = set().union(*(env_file(generator_file(directory, name)) for name in secret["envs"]))
    for name, spec in pod_specs(build_resources(directory)):
        for container in containers(spec):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in generated_maps, name
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["name"] == SECRET_NAME and ref["key"] in secret_keys, f"{name}: {variable['name']}"


def test_production_secrets_stay_out_of_git():
    ignored = (ROOT / "deploy" / ".gitignore").read_text().splitlines()
    assert "k8s/overlays/production/secrets.env" in ignored
    example = K8S / "overlays" / "production" / "secrets.env.example"
    for line in example.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "change-me" in line, f"only placeholders in {example.name}: {line.split('=')[0]}"


# --- 3. rendered by kustomize ----------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if path := shutil.which("kustomize"):
        return [path, "build"]
    if path := shutil.which("kubectl"):
        return [path, "kustomize"]
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    command = kustomize_command()
    if command is None:
        reason = "neither kustomize nor kubectl (kubectl kustomize) is installed: overlays not rendered"
        print(f"SKIPPED rendering: {reason}")
        pytest.skip(reason)
    # A copy, with production's gitignored secrets.env made from its example.
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    production = tree / "overlays" / "production"
    if not (production / "secrets.env").exists():
        shutil.copy(production / "secrets.env.example", production / "secrets.env")
    result = {}
    for overlay in OVERLAYS:
        out = subprocess.run([*command, str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(command)} {overlay}: {out.stderr}"
        result[overlay] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return result


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def config_map(resources: list[dict], prefix: str) -> dict[str, str]:
    (data,) = [r["data"] for name, r in by_kind(resources, "ConfigMap").items() if name.startswith(prefix + "-")]
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates_against_the_api_schema(rendered: dict, overlay: str):
    for version in KUBERNETES_VERSIONS:
        for resource in rendered[overlay]:
            kubernetes_validate.validate(resource, version, strict=True)
    assert {r["metadata"].get("namespace") for r in rendered[overlay] if r["kind"] != "Namespace"} == {
        "trainingplatform"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_probed_limited_and_locked_down(rendered: dict, overlay: str):
    for name, spec in pod_specs(rendered[overlay]):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        claims = by_kind(rendered[overlay], "StatefulSet").get(name, {}).get("spec", {}).get("volumeClaimTemplates", [])
        volumes = {v["name"] for v in spec.get("volumes", [])} | {c["metadata"]["name"] for c in claims}
        for container in containers(spec):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            # The root file system is read-only: whatever is written goes to a mounted volume.
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, name
        main = spec["containers"][0]
        assert "readinessProbe" in main and "livenessProbe" in main, name
        if name in SERVICE_PORTS:
            port = SERVICE_PORTS[name]
            # gRPC, and Prometheus metrics (TP_METRICS_PORT; test_deploy_metrics.py checks the annotations).
            assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"grpc": port, "metrics": 9090}
            assert main["readinessProbe"]["grpc"] == {"port": port}, name
            # The backend's readiness follows its database; its liveness does not (a database outage would
            # restart every backend): the health service `liveness`.
            liveness = {"port": port, "service": "liveness"} if name == "backend" else {"port": port}
            assert main["livenessProbe"]["grpc"] == liveness, name
        if name == "dashboard":
            # HTTP, and the same metrics port; GET /healthz needs no session.
            assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": 8080, "metrics": 9090}
            for probe in ("readinessProbe", "livenessProbe"):
                assert main[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_to_generated_objects(rendered: dict, overlay: str):
    resources = rendered[overlay]
    secrets = by_kind(resources, "Secret")
    maps = by_kind(resources, "ConfigMap")
    (secret_name,) = secrets
    assert secret_name.startswith(SECRET_NAME + "-"), "generated, with the content hash"
    for name, spec in pod_specs(resources):
        for container in containers(spec):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, name
            for variable in container.get("env", []):
                if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["name"] == secret_name, f"{name}: {variable['name']}"
                    assert ref.get("optional") or ref["key"] in secrets[secret_name]["data"], ref["key"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_backend_settings_accept_the_backend_config(rendered: dict, overlay: str):
    resources = rendered[overlay]
    loaded = backend_settings.load(env=config_map(resources, "backend-config"))
    services = by_kind(resources, "Service")
    assert loaded.listen == "0.0.0.0:50051" and loaded.migrate_on_start is False and loaded.metrics_port == 9090
    # The trainers and the telemetry endpoint are Services of the build, on the ports the pods listen on.
    for framework, (address,) in loaded.trainers.items():
        host, port = address.split(":")
        assert framework in host and [p["port"] for p in services[host]["spec"]["ports"]] == [int(port)]
    assert loaded.effective_telemetry_endpoint == "grpc://backend:50051"
    assert [p["port"] for p in services["backend"]["spec"]["ports"]] == [50051]
    # Migrations run in the init container, once, before the server.
    backend = by_kind(resources, "Deployment")["backend"]["spec"]["template"]["spec"]
    assert backend["initContainers"][0]["args"] == ["migrate"]


def pod_environment(resources: list[dict], container: dict) -> dict[str, str]:
    """A container's environment as the kubelet gives it: its ConfigMaps, then its own values and Secret keys."""
    (secret,) = by_kind(resources, "Secret").values()
    maps = by_kind(resources, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif (ref := variable["valueFrom"]["secretKeyRef"])["key"] in secret["data"]:
            env[variable["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def secret_values(resources: list[dict]) -> dict[str, str]:
    (secret,) = by_kind(resources, "Secret").values()
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_settings_accept_the_dashboard_pod_environment(rendered: dict, overlay: str):
    resources = rendered[overlay]
    deployment = by_kind(resources, "Deployment")["dashboard"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = pod_environment(resources, container)
    # Only what the dashboard reads: a variable it ignores would be a setting that silently does nothing.
    assert set(env) <= dashboard_variables(), sorted(set(env) - dashboard_variables())
    loaded = dashboard_settings.load(env=env)
    # Every address of the pod (its loopback default is unreachable), on the port the Service targets.
    assert loaded.host == "0.0.0.0" and loaded.metrics_port == 9090
    (port,) = by_kind(resources, "Service")["dashboard"]["spec"]["ports"]
    assert port["targetPort"] == "http" and loaded.port == 8080
    # The backend through its Service, on the port it listens on.
    host, backend_port = loaded.backend_address.split(":")
    assert [p["port"] for p in by_kind(resources, "Service")[host]["spec"]["ports"]] == [int(backend_port)]
    # The backend's front-end token writes, its read token reads, and the login token is the operator's, reusable.
    secrets = secret_values(resources)
    assert loaded.write_token == secrets["FRONTEND_AUTH_TOKEN"]
    assert loaded.read_token == secrets["READ_AUTH_TOKEN"]
    assert loaded.login_token == secrets["TP_DASHBOARD_TOKEN"] and not loaded.login_token_one_time
    # Behind production's HTTPS ingress the session cookie is Secure; the local overlay is reached over plain HTTP.
    assert loaded.secure_cookie is (overlay == "production")
    # Sessions and the login token live in the process: a second replica would not know the first one's sessions.
    assert deployment["spec"]["replicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainers_are_single_replicas_that_stop_gracefully(rendered: dict, overlay: str):
    deployments = by_kind(rendered[overlay], "Deployment")
    for name in ("trainer-timm", "trainer-ultralytics"):
        spec = deployments[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", name
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= TRAINER_CANCEL_GRACE_S + 15
        mounts = {m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert {"/data", "/tmp", "/dev/shm"} <= mounts, name


def test_local_overlay_is_one_backend_cpu_trainers_and_postgres(rendered: dict):
    resources = rendered["local"]
    assert by_kind(resources, "Deployment")["backend"]["spec"]["replicas"] == 1
    assert "nvidia.com/gpu" not in yaml.safe_dump(resources)
    assert "postgres" in by_kind(resources, "StatefulSet")
    assert not by_kind(resources, "PodDisruptionBudget"), "a budget of 1 out of 1 replica blocks node drains"
    secrets = env_file(K8S / "overlays" / "local" / "secrets.env")
    assert secrets["DATABASE_URL"].endswith(f":{secrets['POSTGRES_PASSWORD']}@postgres:5432/platform")
    assert all(value.startswith(("local-dev-", "postgresql://")) for value in secrets.values()), "placeholders only"


def test_production_overlay_is_replicated_gpu_backed_and_rebalanced(rendered: dict):
    resources = rendered["production"]
    deployments = by_kind(resources, "Deployment")
    assert deployments["backend"]["spec"]["replicas"] >= 2
    (budget,) = by_kind(resources, "PodDisruptionBudget").values()
    assert budget["spec"]["minAvailable"] == 1
    backend_labels = deployments["backend"]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= backend_labels.items()
    for name in ("trainer-timm", "trainer-ultralytics"):
        resources_of = deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources_of["requests"]["nvidia.com/gpu"] == resources_of["limits"]["nvidia.com/gpu"] == 1
        assert deployments[name]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-cuda")
    assert float(config_map(resources, "backend-config")["TP_MAX_CONNECTION_AGE_S"]) > 0
    trainer_config = config_map(resources, "trainer-config")
    assert trainer_config["MLFLOW_TRACKING_URI"].startswith("https://")
    assert {"AWS_S3_ENDPOINT_URL", "TP_ARTIFACTS_BUCKET", "AWS_REGION"} <= set(trainer_config)
    # No in-cluster database: DATABASE_URL comes from the Secret.
    assert not by_kind(resources, "StatefulSet")


def trainer_deployments(resources: list[dict]) -> dict[str, dict]:
    return {
        name: deployment
        for name, deployment in by_kind(resources, "Deployment").items()
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainers_read_weights_and_data_sets_from_read_only_volumes(rendered: dict, overlay: str):
    # The images set HF_HOME and TORCH_HOME under /models with HF_HUB_OFFLINE=1: without a volume there, no
    # pretrained weights; and dataset paths must lie under TP_DATA_ROOTS, which must be a mounted volume.
    trainers = trainer_deployments(rendered[overlay])
    assert set(trainers) == {"trainer-timm", "trainer-ultralytics"}
    roots = config_map(rendered[overlay], "trainer-config")["TP_DATA_ROOTS"].split(":")
    claims = by_kind(rendered[overlay], "PersistentVolumeClaim")
    for name, deployment in trainers.items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for path in ("/models", "/datasets"):
            assert path in mounts and mounts[path].get("readOnly") is True, f"{name}: {path} read-only"
            volume = volumes[mounts[path]["name"]]
            assert "emptyDir" not in volume, f"{name}: {path} must be a volume prepared beforehand"
            if claim := volume.get("persistentVolumeClaim"):
                assert claim["claimName"] in claims, f"{name}: {claim['claimName']} is not in the build"
        assert roots and all(any(root == m or root.startswith(m + "/") for m in mounts) for root in roots), name
        # A local .pt model (docs/deployment.md: `/models/yolo11n.pt`, ultralytics' only pretrained weights here) is
        # a path StartTraining checks against the same roots: /datasets alone refused it.
        assert "/datasets" in roots and "/models" in roots, (name, roots)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_data_survives_a_restart(rendered: dict, overlay: str):
    # Checkpoints, runs and undelivered telemetry spools live under /data (docs/trainer_service.md, Shutdown):
    # an emptyDir would lose them with the pod.
    claims = by_kind(rendered[overlay], "PersistentVolumeClaim")
    used = []
    for name, deployment in trainer_deployments(rendered[overlay]).items():
        spec = deployment["spec"]["template"]["spec"]
        (data,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/data"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == data["name"]]
        assert set(volume) == {"name", "persistentVolumeClaim"}, f"{name}: /data is {volume}"
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], name
        # ReadWriteOnce is enough only because the old pod is gone before the new one starts.
        assert deployment["spec"]["strategy"]["type"] == "Recreate", name
        assert "storageClassName" not in claim["spec"], "left to the cluster's default"
        used.append(claim["metadata"]["name"])
    assert len(set(used)) == len(used), "each trainer has a data volume of its own"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_carries_the_part_of_label(rendered: dict, overlay: str):
    # docs/deployment.md has a PodMonitor select the pods by it; the selectors stay as they are (immutable).
    for resource in rendered[overlay]:
        if resource["kind"] in ("Deployment", "StatefulSet"):
            name = resource["metadata"]["name"]
            labels = resource["spec"]["template"]["metadata"]["labels"]
            assert labels.get("app.kubernetes.io/part-of") == "trainingplatform", name
            assert "app.kubernetes.io/part-of" not in resource["spec"]["selector"]["matchLabels"], name


def documented_secret_keys() -> dict[str, set[str]]:
    """docs/deployment.md's list of the Secret keys each pod reads: {"backend": {...}, "trainers": {...}}."""
    lines = (ROOT / "docs" / "deployment.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Each overlay generates the Secret"))
    documented: dict[str, set[str]] = {}
    component = ""
    for line in lines[start + 1 :]:
        if documented and not line.startswith(("- ", "  ")):
            break
        if line.startswith("- "):
            component, _, line = line[2:].partition(":")
            documented[component] = set()
        if component:
            documented[component] |= set(re.findall(r"`([A-Z0-9_]+)`", line))
    return documented


def secret_keys_of(spec: dict) -> set[str]:
    return {
        ref["key"]
        for container in containers(spec)
        for variable in container.get("env", [])
        if (ref := variable.get("valueFrom", {}).get("secretKeyRef"))
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_docs_list_the_secret_keys_the_pods_read(rendered: dict, overlay: str):
    documented = documented_secret_keys()
    assert set(documented) == {"backend", "trainers", "dashboard"}
    deployments = by_kind(rendered[overlay], "Deployment")
    assert documented["backend"] == secret_keys_of(deployments["backend"]["spec"]["template"]["spec"])
    assert documented["dashboard"] == secret_keys_of(deployments["dashboard"]["spec"]["template"]["spec"])
    for name, deployment in trainer_deployments(rendered[overlay]).items():
        assert documented["trainers"] == secret_keys_of(deployment["spec"]["template"]["spec"]), name


def test_the_docs_run_tp_with_the_front_ends_token():
    # INTERNAL_AUTH_TOKEN is the services' token (it can do anything, report telemetry included): a person's `tp`
    # sends FRONTEND_AUTH_TOKEN as TP_AUTH_TOKEN.
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line for line in lines if re.search(r"(^|\s|/)tp\s", line)]
    assert commands, "the docs run tp somewhere"
    for command in commands:
        assert "INTERNAL_AUTH_TOKEN" not in command, command
        assert "TP_AUTH_TOKEN=" in command, command


MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainers_take_mlflow_credentials_from_the_secret_when_there(rendered: dict, overlay: str):
    # An MLflow server behind authentication needs them; one without needs none, so the keys are optional.
    for name, deployment in trainer_deployments(rendered[overlay]).items():
        env = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        for key in MLFLOW_CREDENTIALS:
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == key and ref["optional"] is True, f"{name}: {key}"
    example = (K8S / "overlays" / "production" / "secrets.env.example").read_text()
    for key in MLFLOW_CREDENTIALS:
        assert re.search(rf"^#? ?{key}=change-me", example, re.M), f"secrets.env.example shows {key}"


def admits(policy: dict, labels: dict[str, str], port: int, same_namespace: bool) -> bool:
    """Whether one of the policy's ingress rules admits a pod with `labels` on `port` (TCP)."""

    def peer_matches(peer: dict) -> bool:
        if "ipBlock" in peer or ("namespaceSelector" in peer and peer["namespaceSelector"] != {}):
            return False
        if not same_namespace and "namespaceSelector" not in peer:
            return False
        return peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()

    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        peers = rule.get("from")
        if peers is None or any(peer_matches(peer) for peer in peers):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_cover_the_backend_and_let_its_clients_in(rendered: dict, overlay: str):
    resources = rendered[overlay]
    policies = by_kind(resources, "NetworkPolicy").values()
    deployments = by_kind(resources, "Deployment")

    def selecting(name: str) -> list[dict]:
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        return [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]

    backend = selecting("backend")
    assert backend, "a NetworkPolicy selects the backend pods"
    # The trainers' training processes stream telemetry to it, any pod of the namespace is a client, and any
    # Prometheus scrapes its metrics (as the trainers').
    for name in ("trainer-timm", "trainer-ultralytics"):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert any(admits(p, labels, 50051, same_namespace=True) for p in backend), name
    assert any(admits(p, {"app": "a-client"}, 50051, same_namespace=True) for p in backend)
    assert any(admits(p, {}, 9090, same_namespace=False) for p in backend)
    # Only the backend calls the trainers.
    backend_labels = deployments["backend"]["spec"]["template"]["metadata"]["labels"]
    for name, port in (("trainer-timm", 50061), ("trainer-ultralytics", 50062)):
        assert any(admits(p, backend_labels, port, same_namespace=True) for p in selecting(name)), name
        assert not any(admits(p, {"app": "a-client"}, port, same_namespace=True) for p in selecting(name)), name
    # The dashboard calls the backend, and its users reach it from anywhere (an ingress controller in another
    # namespace, a LoadBalancer): its login token protects it. Prometheus scrapes it as the others.
    dashboard_labels = deployments["dashboard"]["spec"]["template"]["metadata"]["labels"]
    assert any(admits(p, dashboard_labels, 50051, same_namespace=True) for p in backend)
    dashboard = selecting("dashboard")
    assert dashboard, "a NetworkPolicy selects the dashboard pods"
    assert any(admits(p, {}, 8080, same_namespace=False) for p in dashboard)
    assert any(admits(p, {}, 9090, same_namespace=False) for p in dashboard)
    assert not any(admits(p, {}, 50051, same_namespace=False) for p in dashboard)
