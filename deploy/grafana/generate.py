#!/usr/bin/env python3
"""Writes hookrelay.json, the Grafana dashboard, from the panel list below.
Run after changing a panel: python3 deploy/grafana/generate.py"""
import json, os

PANELS = [
    ("Accepted webhooks by source and status", "reqps",
     ['sum by (source, status) (rate(hookrelay_http_requests_total{instance=~"$instance"}[$__rate_interval]))']),
    # 2xx only: refusals (a 401 flood) are fast and would hide a slow accept path.
    ("Ack latency of accepted webhooks (2xx; p50, p99): the provider's wait", "s",
     ['histogram_quantile(0.5, sum by (le) (rate(hookrelay_http_request_duration_seconds_bucket{instance=~"$instance", class="2xx"}[$__rate_interval])))',
      'histogram_quantile(0.99, sum by (le) (rate(hookrelay_http_request_duration_seconds_bucket{instance=~"$instance", class="2xx"}[$__rate_interval])))']),
    ("End-to-end latency (p50, p99): receipt to broker confirm", "s",
     ['histogram_quantile(0.5, sum by (le, sink) (rate(hookrelay_end_to_end_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
      'histogram_quantile(0.99, sum by (le, sink) (rate(hookrelay_end_to_end_seconds_bucket{instance=~"$instance"}[$__rate_interval])))']),
    ("Backlog by sink (events not yet confirmed)", "short",
     ['sum by (instance, sink) (hookrelay_spool_events{instance=~"$instance"})']),
    ("Backlog fill and oldest unconfirmed event, by sink", "s",
     ['max by (instance, sink) (hookrelay_forward_lag_seconds{instance=~"$instance"})',
      'max by (instance, sink) (hookrelay_spool_bytes{instance=~"$instance"} / hookrelay_spool_max_bytes{instance=~"$instance"})']),
    ("Published and errors by sink", "ops",
     ['sum by (sink) (rate(hookrelay_sink_published_total{instance=~"$instance"}[$__rate_interval]))',
      'sum by (sink, kind) (rate(hookrelay_sink_errors_total{instance=~"$instance"}[$__rate_interval]))',
      'sum by (sink) (rate(hookrelay_dead_lettered_total{instance=~"$instance"}[$__rate_interval]))']),
    ("Published and failed by sink and topic", "ops",
     ['sum by (sink, topic, result) (rate(hookrelay_sink_topic_events_total{instance=~"$instance"}[$__rate_interval]))']),
    ("Events by topic (event type) and outcome", "ops",
     ['sum by (source, event, outcome) (rate(hookrelay_events_total{instance=~"$instance"}[$__rate_interval]))']),
    ("Signature failures by source and reason", "ops",
     ['sum by (source, reason) (rate(hookrelay_signature_failures_total{instance=~"$instance"}[$__rate_interval]))']),
    ("Sink state (1 = full: its sources get 503)", "short",
     ['max by (instance, sink) (hookrelay_sink_state{instance=~"$instance", state="full"})']),
    ("Spool fdatasync p99", "s",
     ['histogram_quantile(0.99, sum by (le, instance, sink) (rate(hookrelay_spool_fsync_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))']),
    ("Sink up (1 = its broker answers), by sink", "short",
     ['max by (instance, sink) (hookrelay_sink_up{instance=~"$instance"})']),
    # process_* come from every kind of target: the job keeps hookrelay's (as in the alerts).
    ("CPU (cores)", "short",
     ['max by (instance) (rate(process_cpu_seconds_total{job=~".*hookrelay.*", instance=~"$instance"}[$__rate_interval]))']),
    ("Memory (resident)", "bytes",
     ['max by (instance) (process_resident_memory_bytes{job=~".*hookrelay.*", instance=~"$instance"})']),
    ("File descriptors: open and limit", "short",
     ['max by (instance) (process_open_fds{job=~".*hookrelay.*", instance=~"$instance"})',
      'max by (instance) (process_max_fds{job=~".*hookrelay.*", instance=~"$instance"})']),
    ("Version and commit per instance", "short",
     ['max by (instance, version, commit) (hookrelay_build_info{instance=~"$instance"})'], "table"),
]

panels = []
for i, (title, unit, exprs, *kind) in enumerate(PANELS):
    table = kind == ["table"]
    panel = {
        "id": i + 1,
        "type": "table" if table else "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + j), "expr": e, "datasource": {"type": "prometheus", "uid": "${datasource}"}} for j, e in enumerate(exprs)],
    }
    if table:
        # One row per series, now: its labels are the content.
        for t in panel["targets"]:
            t.update({"format": "table", "instant": True})
        panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]
    panels.append(panel)

dashboard = {
    "uid": "hookrelay",
    "title": "hookrelay",
    "tags": ["hookrelay", "webhooks"],
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "instance", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": "label_values(hookrelay_ready, instance)", "includeAll": True, "multi": True, "allValue": ".*",
         "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": panels,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hookrelay.json"), "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
