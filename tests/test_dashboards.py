"""Prometheus rules, Grafana dashboard and the monitoring exporter against the metrics the project exposes.

An alert on a misspelt metric never fires and a panel on one stays empty, and
neither Prometheus nor Grafana says so. So every PromQL expression is checked
against the series that the project's registries really expose: serving's and
the stream consumer's metric objects, and the exporter's collector fed a table
written by `write_metrics`. Serving's series are those Ray's metrics agents
export from the replicas (`ServingMetrics.for_ray()`, described by
`serving.metrics.SPECS`; tests/test_serving_metrics.py checks that description
against a real Ray), and the plain registry of `ServingMetrics()` must expose the
very same names. That check reads PromQL with regular expressions
(`parse_promql`: metric names, the label names of their matchers, `by` / `on`
label names; tested on its own below) so that it runs without Prometheus.
Where `promtool` is installed, the config and rules are also checked by it
and the alerts are run on series taken from the exporter's real output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from monitoring.exporter import (
    FEATURE_METRICS,
    MODEL_ROLES,
    OUTCOME_METRICS,
    MonitoringCollector,
    write_metrics,
)
from serving.metrics import (
    BATCH_SIZE,
    ERRORS,
    PREDICTION_LOG,
    RAY_TAGS,
    REQUEST_SECONDS,
    SERVE_TAGS,
    SPECS,
    SWAPS,
    ServingMetrics,
)
from settings import MonitoringSettings, ServingSettings, StreamSettings
from streaming.metrics import ConsumerMetrics
from tests.conftest import needs_tool

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "infra" / "prometheus"
GRAFANA = ROOT / "infra" / "grafana"
ALERTS = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
DASHBOARD = json.loads((GRAFANA / "dashboards" / "fraudpipe.json").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]
QUERY_PANELS = [panel for panel in DASHBOARD["panels"] if panel["type"] != "row"]

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
"""The series prometheus_client writes for a metric of each type (checked against its output below)."""
TARGET_LABELS = {"job", "instance"}
"""Added by Prometheus to every scraped series."""
PROMETHEUS_SERIES = {"up": set[str]()}
"""Series Prometheus makes itself for every target."""


def wrapper_series(owner: object, registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series name -> label names of the metric objects held by `owner` (all of its registry's)."""
    series: dict[str, set[str]] = {}
    families = set()
    for metric in vars(owner).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        families.add(family.name)
        labels = set(metric._labelnames)  # prometheus_client exposes label names of a metric only here
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert families == {family.name for family in registry.collect()}, "a metric of the registry is not held"
    return series


def serving_series() -> dict[str, set[str]]:
    """Serving's series as Ray's metrics agents export them, after checking that the plain registry
    (`ServingMetrics()`, outside Ray) holds the same metrics under the same names and labels,
    less the tags Serve and Ray add (and prometheus_client's `_created`, which no panel reads)."""
    ray: dict[str, set[str]] = {}
    for spec in SPECS:
        ray.update(spec.series())
    plain = ServingMetrics()
    assert plain.registry is not None
    written = wrapper_series(plain, plain.registry)
    assert {name for name in written if not name.endswith("_created")} == set(ray)
    for name, labels in ray.items():
        assert written[name] == labels - set(SERVE_TAGS) - set(RAY_TAGS), name
    assert all(name.startswith("ray_fraudpipe_serve_") for name in ray)
    return ray


def collector_series(registry: CollectorRegistry) -> dict[str, set[str]]:
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def one_day(day: str, scale: float = 1.0) -> pd.DataFrame:
    """Every metric of the contract for `day`, values scaled so two days differ."""
    rows: list[tuple[str, str, float]] = []
    for metric in FEATURE_METRICS:
        rows += [(metric, "TX_AMOUNT", 0.30 * scale), (metric, "TX_DURING_NIGHT", 0.05 * scale)]
    rows += [
        ("prediction_psi", "", 0.25 * scale),
        ("prediction_ks", "", 0.12 * scale),
        ("flagged_share", "", 0.01 * scale),
        ("score_mean", "", 0.02 * scale),
    ]
    rows += [(metric, role, 0.6 * scale) for metric in OUTCOME_METRICS for role in MODEL_ROLES]
    rows += [("labels_complete", "", 1.0), ("dq_success", "", 0.0), ("dq_failed_expectations", "", 2.0)]
    rows += [("drifted_features", "", 1.0)]
    return pd.DataFrame(
        {
            "day": day,
            "metric": [r[0] for r in rows],
            "subject": [r[1] for r in rows],
            "value": [r[2] for r in rows],
        }
    )


def exposed(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as a scraper would parse the exposition; no series twice."""
    text = generate_latest(registry).decode()
    samples = [
        ((sample.name, tuple(sorted(sample.labels.items()))), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    assert len({key for key, _ in samples}) == len(samples), "a series is exposed twice"
    return dict(samples)


def monitoring_registry(path: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(MonitoringCollector(path))
    return registry


@pytest.fixture(scope="module")
def project_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Every series the project exposes -> its label names."""
    path = tmp_path_factory.mktemp("monitoring") / "monitoring_metrics.parquet"
    write_metrics(path, one_day("2018-08-01"))
    stream = ConsumerMetrics()
    series = {
        **serving_series(),
        **wrapper_series(stream, stream.registry),
        **collector_series(monitoring_registry(path)),
    }
    assert any(name.startswith("fraudpipe_monitor_") for name in series)
    return series


# PromQL, read with regular expressions: strings are blanked first so their contents are never names.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"\"")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def parse_promql(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The metric selectors of `expr` (name, matcher label names) and its grouping label names."""
    text = _RANGE.sub("", _GRAFANA_VARIABLE.sub("", _STRING.sub('""', expr)))
    grouping = {
        label.strip() for clause in _GROUPING.findall(text) for label in clause.split(",") if label.strip()
    }
    text = _GROUPING.sub(" ", text)
    selectors = [
        (match[1], set(_MATCHER.findall(match[2] or "")))
        for match in _SELECTOR.finditer(text)
        if not match[3] and match[1].lower() not in _KEYWORDS
    ]
    return selectors, grouping


def promql_problems(expr: str, series: dict[str, set[str]]) -> list[str]:
    selectors, grouping = parse_promql(expr)
    problems = [] if selectors else ["no metric selector"]
    in_scope = set(TARGET_LABELS)
    for name, labels in selectors:
        known = PROMETHEUS_SERIES.get(name, series.get(name))
        if known is None:
            problems.append(f"unknown metric {name}")
            continue
        in_scope |= known
        problems += [f"{name} has no label {label}" for label in sorted(labels - known - TARGET_LABELS)]
    problems += [f"grouping by unknown label {label}" for label in sorted(grouping - in_scope)]
    return problems


def test_promql_parser_reads_names_and_labels() -> None:
    selectors, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="5..", y!~"p|q"}[5m]))) > 0.02 '
        'and on (z) b * 1e3 - time() + c{w="{{no}}"} offset 5m'
    )
    assert selectors == [("a_bucket", {"x", "y"}), ("b", set()), ("c", {"w"})]
    assert grouping == {"le", "z"}
    selectors, grouping = parse_promql('max by (m) (d{m=~"roc_auc|x"}) > 2 * 86400 + e[$__rate_interval]')
    assert selectors == [("d", {"m"}), ("e", set())] and grouping == {"m"}


def test_promql_check_reports_unknown_names_and_labels(project_series: dict[str, set[str]]) -> None:
    errors = ERRORS.exported
    assert (
        promql_problems(f'sum by (kind, replica) (rate({errors}_total{{kind="x"}}[5m]))', project_series)
        == []
    )
    assert promql_problems(
        "sum by (knd) (rate(ray_fraudpipe_serve_error_total[5m])) + fraudpipe_serve_errors_total"
        ' + fraudpipe_stream_lag_messages{topc="t"}',
        project_series,
    ) == [
        "unknown metric ray_fraudpipe_serve_error_total",
        "unknown metric fraudpipe_serve_errors_total",  # the name before Ray's prefix
        "fraudpipe_stream_lag_messages has no label topc",
        "grouping by unknown label knd",
    ]
    assert promql_problems("time() > 5", project_series) == ["no metric selector"]


def test_series_names_match_prometheus_client_exposition() -> None:
    """SUFFIXES is what prometheus_client writes: checked on serving's unlabelled histogram and counter."""
    serving = ServingMetrics()
    serving.batch_size.observe(3)
    serving.swaps.inc()
    written = {
        line.split("{")[0].split(" ")[0]
        for line in serving.exposition().decode().splitlines()
        if line.startswith((BATCH_SIZE.exported, SWAPS.exported))
    }
    expected = {BATCH_SIZE.exported + s for s in SUFFIXES["histogram"]} | {
        SWAPS.exported + s for s in SUFFIXES["counter"]
    }
    # `_created` is left out when PROMETHEUS_DISABLE_CREATED_SERIES is set or in multiprocess mode.
    assert expected - {name for name in expected if name.endswith("_created")} <= written <= expected


def test_alert_rules_have_the_expected_structure() -> None:
    assert {group["name"] for group in ALERTS["groups"]} == {
        "fraudpipe-serving",
        "fraudpipe-streaming",
        "fraudpipe-monitoring",
        "fraudpipe-targets",
    }
    names = [rule["alert"] for rule in RULES]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in RULES:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule[
            "alert"
        ]
    assert {
        "ServingLatencyP99OverBudget",
        "ServingInternalErrors",
        "ServingUnavailable",
        "PredictionLogDropping",
        "StreamConsumerLagHigh",
        "StreamFeaturesStale",
        "FeatureDrift",
        "PredictionDrift",
        "OutcomeAveragePrecisionLow",
        "MonitoringStale",
    } <= set(names)


@pytest.mark.parametrize("rule", RULES, ids=[rule["alert"] for rule in RULES])
def test_alert_expr_uses_exposed_metrics(rule: dict[str, Any], project_series: dict[str, set[str]]) -> None:
    assert promql_problems(rule["expr"], project_series) == []


def test_prometheus_config_scrapes_the_project_ports_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [PROMETHEUS / name for name in config["rule_files"]] == [PROMETHEUS / "alerts.yml"]
    targets = {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in config["scrape_configs"]
    }
    # Serving: Ray's metrics agent (every replica of the node), not the app's port behind the proxy.
    assert targets == {
        "fraudpipe-serve": [f"127.0.0.1:{ServingSettings().ray_metrics_port}"],
        "fraudpipe-stream": [f"127.0.0.1:{StreamSettings().metrics_port}"],
        "fraudpipe-monitor": [f"127.0.0.1:{MonitoringSettings().exporter_port}"],
    }
    assert ServingSettings().ray_metrics_port != ServingSettings().port
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])


def test_dashboard_structure() -> None:
    assert DASHBOARD["schemaVersion"] >= 39 and DASHBOARD["uid"] == "fraudpipe"
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert [panel["title"] for panel in DASHBOARD["panels"] if panel["type"] == "row"] == [
        "Serving (ray_fraudpipe_serve_*, every replica: Ray's metrics agents)",
        "Streaming (fraudpipe_stream_*)",
        "Drift (fraudpipe_monitor_*, latest monitored day)",
        "Outcomes and data quality (fraudpipe_monitor_*)",
    ]
    for panel in QUERY_PANELS:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_panels_fit_the_grid_without_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("panel", QUERY_PANELS, ids=[panel["title"] for panel in QUERY_PANELS])
def test_dashboard_expr_uses_exposed_metrics(
    panel: dict[str, Any], project_series: dict[str, set[str]]
) -> None:
    for target in panel["targets"]:
        assert promql_problems(target["expr"], project_series) == [], target["refId"]


def test_dashboard_shows_every_metric_the_project_exposes(project_series: dict[str, set[str]]) -> None:
    """A metric added to a registry without a panel fails here."""
    used = {
        name
        for panel in QUERY_PANELS
        for target in panel["targets"]
        for name, _ in parse_promql(target["expr"])[0]
    }
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", name) for name in project_series}
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in used}
    assert families - shown == set()


def test_grafana_provisioning_matches_the_dashboard() -> None:
    provisioning = GRAFANA / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    default = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}["datasource"][
        "current"
    ]
    assert [(s["type"], s["uid"]) for s in sources] == [("prometheus", default["value"])]
    providers = yaml.safe_load((provisioning / "dashboards" / "fraudpipe.yaml").read_text())["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [
        ("file", "/var/lib/grafana/dashboards/fraudpipe")
    ]


def test_write_metrics_upserts_by_day_metric_and_subject(tmp_path: Path) -> None:
    path = tmp_path / "lake" / "monitoring_metrics.parquet"
    first = one_day("2018-08-01")
    write_metrics(path, first)
    write_metrics(path, one_day("2018-08-02"))
    again = pd.DataFrame(
        {
            "day": "2018-08-01",
            "metric": ["psi", "roc_auc"],
            "subject": ["TX_AMOUNT", "challenger"],
            "value": [0.9, 0.1],
        }
    )
    write_metrics(path, again)
    table = pd.read_parquet(path)
    assert len(table) == 2 * len(first)
    assert not table.duplicated(["day", "metric", "subject"]).any()
    values = table.set_index(["day", "metric", "subject"])["value"]
    assert values[("2018-08-01", "psi", "TX_AMOUNT")] == 0.9
    assert values[("2018-08-01", "roc_auc", "challenger")] == 0.1
    assert values[("2018-08-01", "psi", "TX_DURING_NIGHT")] == 0.05
    assert values[("2018-08-02", "psi", "TX_AMOUNT")] == 0.3
    assert str(table["updated_at"].dt.tz) == "UTC"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]


def test_concurrent_writers_keep_each_others_rows(tmp_path: Path) -> None:
    path = tmp_path / "monitoring_metrics.parquet"
    writers, writes = 4, 6
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            start.wait()
            for i in range(writes):
                row = {"day": "2018-08-01", "metric": "psi", "subject": f"f{writer}_{i}", "value": [float(i)]}
                write_metrics(path, pd.DataFrame(row))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(pd.read_parquet(path)["subject"]) == sorted(
        f"f{w}_{i}" for w in range(writers) for i in range(writes)
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"day": "2018-8-1"}, "day"),
        ({"day": "2018-02-30"}, "day"),
        ({"metric": "auc"}, "metric"),
        ({"metric": "psi", "subject": ""}, "subject"),
        ({"metric": "roc_auc", "subject": "model_v3"}, "subject"),
        ({"metric": "score_mean", "subject": "champion"}, "subject"),
        ({"value": float("inf")}, "value"),
        ({"value": "0.3"}, "value"),
        ({"updated_at": pd.Timestamp("2018-08-02")}, "updated_at"),
        ({"extra": 1}, "unknown columns"),
    ],
)
def test_write_metrics_refuses_rows_off_contract(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    row = {"day": "2018-08-01", "metric": "drifted_features", "subject": "", "value": 1.0, **change}
    with pytest.raises(ValueError, match=field):
        write_metrics(tmp_path / "m.parquet", pd.DataFrame([row]))
    assert not (tmp_path / "m.parquet").exists()


def test_write_metrics_refuses_a_key_twice_in_one_call(tmp_path: Path) -> None:
    rows = pd.concat([one_day("2018-08-01").head(1)] * 2)
    with pytest.raises(ValueError, match="repeated"):
        write_metrics(tmp_path / "m.parquet", rows)


def test_collector_exposes_each_metrics_latest_day(tmp_path: Path) -> None:
    path = tmp_path / "monitoring_metrics.parquet"
    registry = monitoring_registry(path)
    assert generate_latest(registry) == b""
    write_metrics(path, one_day("2018-08-01"))
    # Outcome metrics lag: day 2 has no outcomes yet, so they stay at day 1.
    write_metrics(path, one_day("2018-08-02", scale=2.0).query("metric not in @OUTCOME_METRICS"))
    samples = exposed(registry)
    assert samples[("fraudpipe_monitor_feature_psi", (("feature", "TX_AMOUNT"),))] == pytest.approx(0.6)
    assert samples[("fraudpipe_monitor_feature_ks", (("feature", "TX_DURING_NIGHT"),))] == pytest.approx(0.1)
    assert samples[("fraudpipe_monitor_prediction", (("metric", "prediction_psi"),))] == pytest.approx(0.5)
    assert samples[("fraudpipe_monitor_outcome", (("metric", "roc_auc"), ("model", "challenger")))] == 0.6
    assert samples[("fraudpipe_monitor_data_quality", (("metric", "dq_failed_expectations"),))] == 2.0
    assert samples[("fraudpipe_monitor_drifted_features", ())] == 1.0
    day = {
        dict(labels)["metric"]: value
        for (name, labels), value in samples.items()
        if name == "fraudpipe_monitor_latest_day_timestamp_seconds"
    }
    assert day["psi"] == pd.Timestamp("2018-08-02", tz="UTC").timestamp() == 1533168000
    assert day["average_precision"] == 1533081600
    assert len(day) == 13
    assert sum(name == "fraudpipe_monitor_outcome" for name, _ in samples) == len(OUTCOME_METRICS) * len(
        MODEL_ROLES
    )

    write_metrics(
        path,
        pd.DataFrame({"day": ["2018-08-02"], "metric": ["psi"], "subject": ["TX_AMOUNT"], "value": [0.7]}),
    )
    assert exposed(registry)[("fraudpipe_monitor_feature_psi", (("feature", "TX_AMOUNT"),))] == 0.7
    path.unlink()
    assert generate_latest(registry) == b""


def test_export_command_serves_the_table(tmp_path: Path) -> None:
    path = tmp_path / "monitoring_metrics.parquet"
    write_metrics(path, one_day("2018-08-01"))
    process = subprocess.Popen(
        [sys.executable, "-m", "monitoring", "export", "--metrics-path", str(path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/metrics", line)
        assert url, (line, process.stderr.read() if process.poll() is not None and process.stderr else "")
        with urllib.request.urlopen(url[0]) as response:
            text = response.read().decode()
        assert 'fraudpipe_monitor_feature_psi{feature="TX_AMOUNT"} 0.3' in text
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0


def promtool(*args: str) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def input_series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    selector = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{name}{{{selector}}}", "values": values}


def firing(*alerts: tuple[str, dict[str, str]]) -> list[dict[str, Any]]:
    """promtool's expected samples of ALERTS{alertstate="firing"} for `alerts` (name, labels)."""
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in RULES}
    return [
        {
            "labels": input_series(
                "ALERTS",
                {"alertname": name, "alertstate": "firing", "severity": severity[name], **labels},
                "",
            )["series"],
            "value": 1,
        }
        for name, labels in alerts
    ]


@needs_tool(shutil.which("promtool") is not None, "promtool (Debian's prometheus)")
def test_alerts_fire_under_promtool_on_the_exporters_series(tmp_path: Path) -> None:
    """Unhealthy series fire exactly the expected alerts, healthy ones none, stale monitoring by its delay."""
    promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    path = tmp_path / "monitoring_metrics.parquet"
    write_metrics(path, one_day("2018-08-01"))
    monitor = {"job": "fraudpipe-monitor", "instance": "127.0.0.1:9465"}
    exported = [
        input_series(name, {**dict(labels), **monitor}, f"{value}x60")
        for (name, labels), value in exposed(monitoring_registry(path)).items()
    ]
    ray_agent = {"job": "fraudpipe-serve", "instance": f"127.0.0.1:{ServingSettings().ray_metrics_port}"}
    # Two replicas on the node, each with half the traffic: the rules must sum over them.
    replicas = [
        {**ray_agent, "deployment": "FraudScoring", "application": "fraud", "replica": name}
        for name in ("fraud#FraudScoring#a", "fraud#FraudScoring#b")
    ]
    stream = {"job": "fraudpipe-stream", "instance": "127.0.0.1:9464", "topic": "transactions"}
    latency = REQUEST_SECONDS.exported

    def serving(per_minute: dict[str, int], le_seconds: str) -> list[dict[str, str]]:
        """Requests by status per minute, the 200s all in the bucket ending at `le_seconds`."""
        buckets = [
            (le, per_minute["200"] if float(le) >= float(le_seconds) else 0)
            for le in ("0.01", "0.03", "+Inf")
        ]
        endpoint = {"endpoint": "/v1/score"}
        return [
            *(
                input_series(f"{latency}_count", {**r, **endpoint, "status": s}, f"0+{n // 2}x60")
                for s, n in per_minute.items()
                for r in replicas
            ),
            *(
                input_series(
                    f"{latency}_bucket", {**r, **endpoint, "status": "200", "le": le}, f"0+{n // 2}x60"
                )
                for le, n in buckets
                for r in replicas
            ),
        ]

    def log(sent: int, dropped: int) -> list[dict[str, str]]:
        name = f"{PREDICTION_LOG.exported}_total"
        return [
            *(input_series(name, {**r, "outcome": "sent"}, f"0+{sent // 2}x60") for r in replicas),
            *(input_series(name, {**r, "outcome": "dropped"}, f"0+{dropped // 2}x60") for r in replicas),
        ]

    def consumer(lag: int, freshness_s: int, up: int) -> list[dict[str, str]]:
        return [
            input_series("fraudpipe_stream_lag_messages", stream, f"{lag}x60"),
            input_series("fraudpipe_stream_feature_freshness_seconds", stream, f"{freshness_s}x60"),
            input_series("up", {"job": stream["job"], "instance": stream["instance"]}, f"{up}x60"),
        ]

    def latest_day(metric: str, days_ago: int) -> dict[str, str]:
        """The exporter's day series for a day `days_ago` before the test's clock starts (time() = 0)."""
        name = "fraudpipe_monitor_latest_day_timestamp_seconds"
        return input_series(name, {**monitor, "metric": metric}, f"{-days_ago * 86400}x180")

    healthy_monitoring = [
        input_series("fraudpipe_monitor_feature_psi", {**monitor, "feature": "TX_AMOUNT"}, "0.1x60"),
        input_series(
            "fraudpipe_monitor_outcome",
            {**monitor, "metric": "average_precision", "model": "champion"},
            "0.7x60",
        ),
        input_series("fraudpipe_monitor_data_quality", {**monitor, "metric": "dq_success"}, "1x60"),
    ]
    tests: list[dict[str, Any]] = [
        {
            "interval": "1m",
            "input_series": [
                *exported,
                *serving({"200": 600, "500": 20, "503": 20}, le_seconds="0.03"),
                *log(sent=500, dropped=50),
                *consumer(lag=20_000, freshness_s=600, up=0),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                *healthy_monitoring,
                *serving({"200": 600, "422": 5}, le_seconds="0.01"),
                *log(sent=600, dropped=0),
                *consumer(lag=10, freshness_s=5, up=1),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                latest_day("psi", days_ago=3),
                latest_day("ks", days_ago=1),
                latest_day("roc_auc", days_ago=3),
                latest_day("average_precision", days_ago=10),
            ],
        },
    ]
    unhealthy = firing(
        ("ServingLatencyP99OverBudget", {}),
        ("ServingInternalErrors", {}),
        ("ServingUnavailable", {}),
        ("PredictionLogDropping", {}),
        ("StreamConsumerLagHigh", {"topic": "transactions"}),
        ("StreamFeaturesStale", {"topic": "transactions"}),
        ("TargetDown", {"job": stream["job"], "instance": stream["instance"]}),
        ("FeatureDrift", {"feature": "TX_AMOUNT"}),
        ("PredictionDrift", {}),
        ("DataQualityFailed", {}),
    )
    checks: list[list[tuple[str, list[dict[str, Any]]]]] = [
        [("30m", unhealthy)],
        [("30m", [])],
        [
            ("30m", []),  # not yet for their hour
            (
                "2h",
                firing(
                    ("MonitoringStale", {"metric": "psi"}),
                    ("OutcomeMonitoringStale", {"metric": "average_precision"}),
                ),
            ),
        ],
    ]
    for test, expected in zip(tests, checks, strict=True):
        test["promql_expr_test"] = [
            {"expr": 'ALERTS{alertstate="firing"}', "eval_time": at, "exp_samples": samples}
            for at, samples in expected
        ]
    unit = {"rule_files": [str(PROMETHEUS / "alerts.yml")], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(unit))
    promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
