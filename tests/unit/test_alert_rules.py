"""deploy/prometheus, read as files: every alert rule has its unit tests and uses only the metrics
and labels of SPEC §8; the scrape configurations load the rules and scrape the tracker's jobs.

promtool's own checks of the same files need the tool: tests/integration/test_alert_rules.py."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

DIR = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

# SPEC §8: each metric and its labels; histograms also have _bucket (le), _sum and _count.
METRICS = {
    "tracker_events_total": {"type", "outcome"},
    "tracker_dead_letters_total": {"reason"},
    "tracker_batch_duration_seconds": set(),
    "tracker_batch_events": set(),
    "tracker_event_lag_seconds": set(),
    "tracker_jobs_lost_total": {"reason"},
    "tracker_jobs": {"status"},
    "tracker_queue_messages_ready": {"queue"},
    "tracker_http_requests_total": {"method", "route", "code"},
    "tracker_http_request_duration_seconds": {"route"},
    # SPEC §11: how long jobs took, by kind (capped) and status.
    "tracker_job_duration_seconds": {"kind", "status"},
    # Beyond SPEC §8 (README's metrics table): the API's held waits.
    "tracker_waits_held": set(),
    "tracker_waits_refused_total": {"cap"},
    # Beyond SPEC §8 (README's metrics table): the database's errors (§14), webhooks (§13).
    "tracker_store_errors_total": {"kind"},
    "tracker_webhook_deliveries_total": {"outcome"},
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
JOBS = {"tracker-api", "tracker-consumer"}
CONFIGS = ["prometheus.yml", "prometheus.compose.yml"]  # the local one and compose's


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load((DIR / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("config", CONFIGS)
def test_the_scrape_configs_load_the_rules_and_scrape_the_tracker(config):
    loaded = yaml.safe_load((DIR / config).read_text())
    assert loaded["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in loaded["scrape_configs"]} == JOBS


def test_the_local_config_scrapes_the_default_addresses():
    loaded = yaml.safe_load((DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in loaded["scrape_configs"]}
    assert targets == {"tracker-api": ["127.0.0.1:8000"], "tracker-consumer": ["127.0.0.1:9464"]}


def test_every_alert_is_tested():
    tested = yaml.safe_load((DIR / "alerts_test.yml").read_text())
    names = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    assert names == {rule["alert"] for rule in rules()}


def test_the_rules_use_only_the_metrics_and_labels_of_the_spec():
    for rule in rules():
        expr = rule["expr"]
        for name, selector in re.findall(r"\b(tracker_\w+)(\{[^}]*\})?", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in METRICS else name
            assert base in METRICS, f"{rule['alert']}: {name} is not a metric of SPEC §8"
            used = set(re.findall(r"(\w+)\s*[=!~]", selector))
            assert used <= METRICS[base] | TARGET_LABELS, f"{rule['alert']}: {name} has no label {used}"
        for label in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {part.strip() for part in label.split(",")}
            # le: a histogram's buckets, kept apart for histogram_quantile
            assert grouped <= set().union(*METRICS.values()) | TARGET_LABELS | {"le"}, rule["alert"]
        for job in re.findall(r'job="([^"]+)"', expr):
            assert job in JOBS, rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
