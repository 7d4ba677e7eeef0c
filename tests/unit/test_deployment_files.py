"""The deployment artifacts agree with the gateway they deploy.

config/kubernetes (Deployment, Service, ConfigMap), config/prometheus/alerts.yaml and
config/grafana/gateway-dashboard.json are other tools' files (tests/unit/test_config_examples.py
skips these folders). Checked here: they parse; the Deployment's probes, ports, shutdown timing
and security settings match the gateway config it mounts, and that config validates; every
metric and label the alerts and the dashboard query exists in gateway/observability/metrics.py,
read from its prometheus-client collectors, so a renamed metric or label fails here instead of
leaving an alert that can never fire.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.config.loader import parse_config
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError
from gateway.observability import metrics
from gateway.supervisor import KILL_AFTER_DRAIN

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "config" / "kubernetes"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "config" / "grafana" / "gateway-dashboard.json"
ARTIFACTS = sorted(
    path
    for folder in ("kubernetes", "prometheus", "grafana")
    for path in (ROOT / "config" / folder).rglob("*")
    if path.suffix in {".yaml", ".yml", ".json"}
)

ADMIN_TOKEN = "x" * 32
ENVIRON = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}

# Labels Prometheus attaches to every scraped series (the target's), not the gateway.
TARGET_LABELS = frozenset({"instance", "job"})


# --- parsing ----------------------------------------------------------------------------------


def _load(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def test_artifacts_exist() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in ARTIFACTS}
    for required in (
        "config/kubernetes/deployment.yaml",
        "config/kubernetes/service.yaml",
        "config/kubernetes/configmap.yaml",
        "config/prometheus/alerts.yaml",
        "config/grafana/gateway-dashboard.json",
    ):
        assert required in names


@pytest.mark.parametrize("path", ARTIFACTS, ids=[p.relative_to(ROOT).as_posix() for p in ARTIFACTS])
def test_artifact_parses(path: Path) -> None:
    documents = _load(path)
    assert documents, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in documents)


# --- Kubernetes -------------------------------------------------------------------------------


@cache
def _manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in config/kubernetes by kind (each kind appears once)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in _load(path):
            kind = doc["kind"]
            assert kind not in found, f"two {kind} objects"
            found[kind] = doc
    return found


def _deployment() -> dict[str, Any]:
    return _manifests()["Deployment"]


def _pod() -> dict[str, Any]:
    spec: dict[str, Any] = _deployment()["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    containers = _pod()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _config_text() -> str:
    text: str = _manifests()["ConfigMap"]["data"]["gateway.yaml"]
    return text


def _config(**environ: str) -> GatewayConfig:
    return parse_config(_config_text(), environ={**ENVIRON, **environ}, source="configmap")


def _container_port(name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in _container()["ports"] if p["name"] == name_or_number]
    assert isinstance(port, int)
    return port


def _env(name: str) -> dict[str, Any]:
    (entry,) = [e for e in _container()["env"] if e["name"] == name]
    assert isinstance(entry, dict)
    return entry


def _pre_stop_sleep() -> float:
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    # The image guarantees Python, not a shell.
    assert command[:2] == ["python", "-c"], command
    match = re.fullmatch(r"import time; time\.sleep\(([0-9.]+)\)", command[2])
    assert match, command
    return float(match.group(1))


def test_kubernetes_objects() -> None:
    assert set(_manifests()) >= {"Deployment", "Service", "ConfigMap"}
    assert "Secret" not in _manifests(), "the admin token Secret is created by hand, not committed"


def test_kustomization_lists_every_manifest() -> None:
    path = KUBERNETES / "kustomization.yaml"
    if not path.exists():
        pytest.skip("no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {path.name}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_configmap_config_validates() -> None:
    config = _config()
    # The kubelet and Prometheus reach the admin listener on the pod IP.
    assert not ipaddress.ip_address(config.admin.listen.host).is_loopback
    assert config.admin.token == ADMIN_TOKEN


def test_admin_token_comes_from_a_secret() -> None:
    reference = _env("GATEWAY_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "gateway-admin"
    assert reference["key"] == "token"
    assert reference.get("optional") is not True
    # No default: without the Secret the config does not validate (the pod does not start
    # with an admin listener open and no token).
    with pytest.raises(ConfigError, match=r"admin\.token"):
        parse_config(_config_text(), environ={})


def test_workers_follow_the_cpu_limit() -> None:
    reference = _env("GATEWAY_WORKERS")["valueFrom"]["resourceFieldRef"]
    assert reference["resource"] == "limits.cpu"
    assert str(reference.get("divisor", "1")) == "1"
    limit = str(_container()["resources"]["limits"]["cpu"])
    assert limit.isdigit(), f"a whole-core CPU limit is one worker per core, got {limit}"
    # What the kubelet puts in GATEWAY_WORKERS for that limit.
    assert _config(GATEWAY_WORKERS=limit).server.workers == int(limit)


@pytest.mark.parametrize(
    ("probe", "path"), [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
)
def test_probe_hits_the_admin_port(probe: str, path: str) -> None:
    check = _container()[probe]["httpGet"]
    assert check["path"] == path
    assert check.get("scheme", "HTTP") == "HTTP"
    port = _container_port(check["port"])
    assert port == _config().admin.listen.port
    assert port != _config().server.listen.port


@pytest.mark.parametrize(("name", "section"), [("http", "server"), ("admin", "admin")])
def test_container_ports_match_the_config(name: str, section: str) -> None:
    assert _container_port(name) == getattr(_config(), section).listen.port


def test_scrape_annotations_point_at_admin_metrics() -> None:
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _config().admin.listen.port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_pre_stop_and_drain() -> None:
    grace = _pod()["terminationGracePeriodSeconds"]
    sleep = _pre_stop_sleep()
    drain = _config().server.timeouts.drain
    assert sleep > 0
    # The kubelet counts the grace period from the start of preStop and sends SIGTERM after it;
    # the supervisor kills workers still running KILL_AFTER_DRAIN after the drain time. Its
    # own exit must come before the kubelet's SIGKILL.
    needed = sleep + drain + KILL_AFTER_DRAIN
    assert grace > needed, f"{grace}s <= preStop {sleep}s + drain {drain}s + {KILL_AFTER_DRAIN}s"


def test_runs_the_config_from_the_configmap() -> None:
    container = _container()
    argv = [*container.get("command", ["gateway"]), *container["args"]]
    assert argv[:2] == ["gateway", "run"]
    config_path = Path(argv[argv.index("--config") + 1])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in _pod()["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == _manifests()["ConfigMap"]["metadata"]["name"]
    assert config_path.name in _manifests()["ConfigMap"]["data"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("runAsNonRoot", True),
        ("runAsUser", 10001),  # the Dockerfile's `gateway` user
        ("readOnlyRootFilesystem", True),
        ("allowPrivilegeEscalation", False),
        ("capabilities", {"drop": ["ALL"]}),
    ],
)
def test_container_security_context(key: str, expected: object) -> None:
    assert _container()["securityContext"][key] == expected


def test_dockerfile_user_matches() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    uid = _container()["securityContext"]["runAsUser"]
    assert re.search(rf"useradd\b.*--uid {uid}\b", dockerfile)
    assert re.search(r"^USER gateway$", dockerfile, re.MULTILINE)


def test_read_only_root_has_a_writable_tmp() -> None:
    # Temporary files (prometheus-client's multiprocess files among them) need a writable /tmp.
    (mount,) = [m for m in _container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in _pod()["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


@pytest.mark.parametrize("kind", ["requests", "limits"])
@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_resources_are_set(kind: str, resource: str) -> None:
    assert _container()["resources"][kind][resource]


def test_service_exposes_only_the_public_port() -> None:
    service = _manifests()["Service"]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    (port,) = service["ports"]
    assert port["port"] == 80
    assert _container_port(port["targetPort"]) == _config().server.listen.port
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert _deployment()["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --- PromQL against the metrics the gateway defines -------------------------------------------


@cache
def _series() -> dict[str, frozenset[str]]:
    """Every series name the collectors in gateway/observability/metrics.py export -> labels."""
    series: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        # prometheus-client keeps the label names only on this attribute.
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            if family.type == "counter":  # the family name has _total removed
                series[f"{family.name}_total"] = labels
            elif family.type == "gauge":
                series[family.name] = labels
            elif family.type == "histogram":
                series[f"{family.name}_bucket"] = labels | {"le"}
                series[f"{family.name}_count"] = labels
                series[f"{family.name}_sum"] = labels
            else:
                raise AssertionError(f"{family.name}: teach this test the {family.type} type")
    return series


# Functions, aggregations and keywords; any other identifier must be a gateway series.
PROMQL_WORDS = frozenset(
    {
        # aggregations
        "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
        "quantile", "count_values",
        # functions
        "rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes",
        "histogram_quantile", "clamp", "clamp_min", "clamp_max", "abs", "ceil", "floor",
        "round", "vector", "scalar", "time", "absent", "absent_over_time", "avg_over_time",
        "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
        "label_replace", "label_join",
        # operators and modifiers
        "and", "or", "unless", "bool", "offset",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")
_TEMPLATE_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}|\{\{\s*(\w+)\s*\}\}")


def _balanced(text: str, start: int, step: int) -> tuple[int, int] | None:
    """The span of the parenthesised group opening (step 1) or closing (step -1) at start."""
    if not 0 <= start < len(text) or text[start] != ("(" if step == 1 else ")"):
        return None
    depth = 0
    index = start
    while 0 <= index < len(text):
        depth += {"(": step, ")": -step}.get(text[index], 0)
        if depth == 0:
            return (start, index + 1) if step == 1 else (index, start + 1)
        index += step
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def _metrics_in(expr: str) -> list[str]:
    """Series names in ``expr`` (already stripped of strings, selectors' matchers, ranges)."""
    return [name for name in _IDENTIFIER.findall(expr) if name not in PROMQL_WORDS]


def _strip(expr: str) -> str:
    expr = _VARIABLE.sub(" ", _STRING.sub('""', expr))
    expr = _SELECTOR.sub(lambda m: f"{m.group(1) or ''} ", expr)
    return _RANGE.sub(" ", expr)


def promql_problems(expr: str) -> list[str]:
    """What in ``expr`` names a series or a label the gateway does not export."""
    series = _series()
    problems: list[str] = []
    for match in _SELECTOR.finditer(_STRING.sub('""', expr)):
        name, matchers = match.group(1), match.group(2)
        if name is None:
            problems.append(f"a selector without a metric name: {match.group(0)}")
            continue
        for label in _MATCHER_LABEL.findall(matchers):
            if name in series and label not in series[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    stripped = _strip(expr)
    for clause in _CLAUSE.finditer(stripped):
        labels = [label.strip() for label in clause.group(2).split(",") if label.strip()]
        if clause.group(1) in {"by", "without"}:
            # `sum by (x) (EXPR)` or `sum (EXPR) by (x)`: the labels are those of EXPR's series.
            after = len(stripped) - len(stripped[clause.end() :].lstrip())
            scope = _balanced(stripped, after, 1)
            if scope is None:
                before = stripped[: clause.start()].rstrip()
                scope = _balanced(stripped, len(before) - 1, -1)
            assert scope is not None, f"{clause.group(0)} applies to nothing in {expr!r}"
            names = _metrics_in(_CLAUSE.sub(" ", stripped[scope[0] : scope[1]]))
        else:  # vector matching: a label of either side
            names = _metrics_in(_CLAUSE.sub(" ", stripped))
        for label in labels:
            if label in TARGET_LABELS:
                continue
            lacking = [n for n in names if n in series and label not in series[n]]
            if lacking or not names:
                problems.append(f"{clause.group(1)} ({label}): not a label of {lacking or expr}")
    names = _metrics_in(_CLAUSE.sub(" ", stripped))
    if not names:
        problems.append("no gateway metric in the expression")
    unknown = [name for name in names if name not in series]
    problems += [f"{name} is not a metric of gateway.observability.metrics" for name in unknown]
    return problems


def _template_labels(text: str) -> set[str]:
    return {a or b for a, b in _TEMPLATE_LABEL.findall(text)} - {"value"}


def _labels_of(expr: str) -> frozenset[str]:
    names = _metrics_in(_CLAUSE.sub(" ", _strip(expr)))
    return frozenset[str]().union(*(_series().get(n, frozenset()) for n in names)) | TARGET_LABELS


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('sum by (route) (rate(gateway_requests_total{status_class="5xx"}[5m]))', None),
        ("rate(gateway_requests_total[$__rate_interval])", None),
        ("sum(rate(gateway_requests_total[5m])) by (route)", None),
        ("histogram_quantile(0.9, sum by (le) (rate(gateway_request_duration_seconds_bucket[1m])))",
         None),
        ("sum by (instance) (gateway_connections)", None),
        ("rate(gateway_request_total[5m])", "gateway_request_total is not a metric"),
        ("gateway_requests", "gateway_requests is not a metric"),
        ("gateway_request_duration_seconds", "gateway_request_duration_seconds is not a metric"),
        ('gateway_requests_total{path="/x"}', "has no label 'path'"),
        ("sum by (upstream) (rate(gateway_requests_total[5m]))", "by (upstream)"),
        ("sum(rate(gateway_requests_total[5m])) by (le)", "by (le)"),
        ("sum by (le) (rate(gateway_request_duration_seconds_count[5m]))", "by (le)"),
        ("a / on (route) gateway_connections", "a is not a metric"),
        ("gateway_requests_total / on (kind) gateway_connections", "on (kind)"),
        ('{__name__="gateway_connections"}', "without a metric name"),
        ("vector(1)", "no gateway metric"),
    ],
)  # fmt: skip
def test_promql_checker(expr: str, problem: str | None) -> None:
    problems = promql_problems(expr)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# --- Prometheus alerts ------------------------------------------------------------------------


def _rules() -> Iterator[dict[str, Any]]:
    (document,) = _load(ALERTS)
    for group in document["groups"]:
        assert group["name"]
        yield from group["rules"]


RULES = list(_rules())


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert", "?") for r in RULES])
def test_alert_rule(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["description"]
    if "for" in rule:
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"])
    assert promql_problems(rule["expr"]) == []
    # $labels.x in the annotations is only filled when the expression keeps x.
    used = set[str]().union(*(_template_labels(text) for text in rule["annotations"].values()))
    assert used <= _labels_of(rule["expr"])


@pytest.mark.parametrize(
    ("pattern", "duration"),
    [
        (r'gateway_requests_total\{status_class="5xx"\}.*> 0\.05', "5m"),
        (r"histogram_quantile\(0\.99,.*gateway_request_duration_seconds_bucket.*> 1\b", "10m"),
        (r"by \(upstream, kind\) \(rate\(gateway_upstream_errors_total", "5m"),
        (r'increase\(gateway_config_reloads_total\{result="error"\}\[15m\]\) > 0', None),
        (r"increase\(gateway_worker_restarts_total\[15m\]\) > 0", None),
    ],
    ids=["5xx-ratio", "p99-latency", "upstream-errors", "reload-error", "worker-restart"],
)
def test_required_alert_exists(pattern: str, duration: str | None) -> None:
    matching = [r for r in RULES if re.search(pattern, " ".join(r["expr"].split()))]
    assert matching, f"no alert matches {pattern}"
    assert any(r.get("for") == duration for r in matching)


# --- Grafana dashboard ------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    (document,) = _load(DASHBOARD)
    assert isinstance(document, dict)
    return document


PANELS: list[dict[str, Any]] = _dashboard()["panels"]
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _dashboard()["templating"]["list"]}


def test_dashboard_settings() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"]
    assert dashboard["title"]


def test_dashboard_datasource_variable() -> None:
    variable = _variables()["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


def test_dashboard_route_variable() -> None:
    variable = _variables()["route"]
    assert variable["type"] == "query"
    assert variable["datasource"] == DATASOURCE
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    assert " ".join(text.split()) == "label_values(gateway_requests_total, route)"


@pytest.mark.parametrize(
    "variable", [v for v in _variables().values() if v["type"] == "query"], ids=lambda v: v["name"]
)
def test_dashboard_variable_queries_exist(variable: dict[str, Any]) -> None:
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = re.fullmatch(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", text)
    assert match, text
    assert match.group(2) in _series()[match.group(1)]


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) for i in ids)


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        grid = panel["gridPos"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_panel(panel: dict[str, Any]) -> None:
    assert panel["title"]
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], "a panel with no query"
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids))
    for target in panel["targets"]:
        assert target.get("datasource", DATASOURCE) == DATASOURCE
        assert promql_problems(target["expr"]) == []
        assert _template_labels(target.get("legendFormat", "")) <= _labels_of(target["expr"])


@pytest.mark.parametrize(
    ("title", "metric"),
    [
        ("Requests/s by route", "gateway_requests_total"),
        ("error ratio by route", "gateway_requests_total"),
        ("Latency by route", "gateway_request_duration_seconds_bucket"),
        ("Upstream latency p99", "gateway_upstream_request_duration_seconds_bucket"),
        ("Upstream errors", "gateway_upstream_errors_total"),
        ("Upstream connections by state", "gateway_upstream_connections"),
        ("In-flight requests", "gateway_inflight_requests"),
        ("Client connections", "gateway_connections"),
        ("Config reloads by result", "gateway_config_reloads_total"),
        ("Worker restarts", "gateway_worker_restarts_total"),
        ("Build info", "gateway_build_info"),
    ],
)
def test_required_panel_exists(title: str, metric: str) -> None:
    (panel,) = [p for p in PANELS if title.lower() in p["title"].lower()]
    assert any(metric in _metrics_in(_strip(t["expr"])) for t in panel["targets"])


def test_latency_panel_shows_three_quantiles() -> None:
    (panel,) = [p for p in PANELS if p["title"].startswith("Latency by route")]
    quantiles = {re.match(r"histogram_quantile\(([0-9.]+),", t["expr"]) for t in panel["targets"]}
    assert {m.group(1) for m in quantiles if m} == {"0.5", "0.95", "0.99"}
