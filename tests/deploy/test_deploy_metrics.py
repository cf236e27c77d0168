"""The Prometheus side of deploy/, checked offline: the Grafana dashboard queries only metrics the code defines (and
shows every one), and every pod that serves metrics says where (prometheus.io annotations, TP_METRICS_PORT, the
container port), in Kubernetes and in Compose."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from deploy_files import COMPOSE_FILE, DEPLOY, load
from prometheus_client import Metric
from prometheus_client.registry import REGISTRY
from test_deploy_k8s import BASE, kustomization, read_yaml
from trainingplatform_backend import metrics as backend_metrics  # noqa: F401  (declares the backend's metrics)
from trainingplatform_dashboard.fanout import Counters
from trainingplatform_dashboard.metrics import DashboardCollector
from trainingplatform_sdk.trainer_service import metrics as trainer_metrics  # noqa: F401  (the trainers' metrics)

GRAFANA = DEPLOY / "grafana" / "trainingplatform.json"
METRICS_PORT = 9090
METRIC_NAME = re.compile(r"\btp_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def families() -> Iterator[Metric]:
    """Every metric family the platform's code defines: the registry's, and the dashboard's collector's."""
    yield from (family for family in REGISTRY.collect() if family.name.startswith("tp_"))
    fanout = SimpleNamespace(counters=Counters(), clients=set(), open_subscriptions=0)
    dashboard = SimpleNamespace(fanout=fanout, feed=SimpleNamespace(clients=set(), polls_total=0))
    yield from DashboardCollector(dashboard).collect()  # type: ignore[arg-type]


def defined_series() -> dict[str, str]:
    """Each name a query may use (a counter's `_total`, a histogram's `_bucket`...) and the family it belongs to."""
    names = {}
    for family in families():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def expressions() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_dashboard_parses_and_uses_the_datasource_variable():
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] == "trainingplatform" and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_every_query_uses_metrics_the_code_defines():
    defined = defined_series()
    assert len(defined) > 20, "the registry was read"
    for expr in expressions():
        used = METRIC_NAME.findall(expr)
        assert used, f"no platform metric in {expr!r}"
        unknown = [name for name in used if name not in defined]
        assert not unknown, f"{expr!r} uses {unknown}, which no code defines"


def test_every_metric_the_code_defines_is_on_the_dashboard():
    defined = defined_series()
    shown = {defined[name] for expr in expressions() for name in METRIC_NAME.findall(expr)}
    assert {family.name for family in families()} - shown == set()


def test_the_check_is_not_vacuous():
    assert "tp_backend_points_committed" not in defined_series(), "a counter is queried as `_total`"
    assert "tp_backend_points_committed_total" in defined_series()


# --- where the metrics are served ------------------------------------------------------------------------------


def metered_deployments() -> Iterator[tuple[Path, dict]]:
    for name in ("backend.yaml", "trainer-timm.yaml", "trainer-ultralytics.yaml", "dashboard.yaml"):
        for document in read_yaml(BASE / name):
            if document["kind"] == "Deployment":
                yield BASE / name, document


@pytest.mark.parametrize("path, deployment", list(metered_deployments()), ids=lambda v: getattr(v, "name", ""))
def test_kubernetes_pods_announce_their_metrics(path: Path, deployment: dict):
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }, path.name
    (container,) = template["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == METRICS_PORT, path.name
    # TP_METRICS_PORT comes from the ConfigMap the container reads.
    (source,) = container["envFrom"]
    generated = {g["name"]: g["literals"] for g in kustomization(BASE)["configMapGenerator"]}
    assert f"TP_METRICS_PORT={METRICS_PORT}" in generated[source["configMapRef"]["name"]], path.name


def test_the_network_policies_let_prometheus_scrape():
    policies = read_yaml(BASE / "network-policy.yaml")
    assert {p["metadata"]["name"] for p in policies} == {
        "trainers-from-backend",
        "backend-from-namespace",
        "dashboard-from-anywhere",
    }
    for policy in policies:
        open_ports = [rule["ports"] for rule in policy["spec"]["ingress"] if "from" not in rule]
        assert [{"protocol": "TCP", "port": METRICS_PORT}] in open_ports, policy["metadata"]["name"]


@pytest.mark.parametrize("service", ["backend", "trainer-timm", "trainer-ultralytics", "dashboard"])
def test_compose_services_serve_metrics(service: str):
    compose = load(COMPOSE_FILE)["services"][service]
    assert compose["environment"]["TP_METRICS_PORT"] == str(METRICS_PORT)
    assert compose["expose"] == [str(METRICS_PORT)]


def test_every_metric_is_documented_in_the_readme():
    readme = (DEPLOY.parent / "README.md").read_text()
    section = readme.split("### Metrics", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `(tp_[a-z0-9_]+)` \|", section, re.MULTILINE))
    expected = {family.name + ("_total" if family.type == "counter" else "") for family in families()}
    assert documented == expected
