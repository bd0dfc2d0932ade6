#!/usr/bin/env bash
# Offline checks of the deploy artifacts (no cluster, no Docker engine here):
# helm lint/template for three values files with every manifest validated against
# the Kubernetes schemas, the chart's rendered hookrelay.toml checked by hookrelay
# itself, the kustomize base, Prometheus rules and the Grafana dashboard's queries
# through promtool, and docker-compose.yml against the compose spec.
# Usage: scripts/validate-deploy.sh [path/to/hookrelay binary]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/deploy-tools.sh)"
bin="${1:-target/debug/hookrelay}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf -- '-- %s\n' "$*"; }

# Kinds from the Prometheus Operator have no Kubernetes schema; promtool checks their rules.
k8s_only() { "$VENV_PYTHON" - "$1" "$2" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if d.get("kind") not in ("ServiceMonitor", "PrometheusRule")]
yaml.safe_dump_all(keep, open(sys.argv[2], "w"))
PY
}

check_rendered_config() { # $1 rendered manifests
  "$VENV_PYTHON" - "$1" "$work" <<'PY'
import sys, yaml, re, os
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "ConfigMap" and "hookrelay.toml" in d.get("data", {}):
        toml = d["data"]["hookrelay.toml"]
        work = sys.argv[2]
        # Point secret and TLS files at stand-ins so that `check` can read them.
        for path in set(re.findall(r'"(/etc/hookrelay/[^"]+)"', toml)):
            local = os.path.join(work, path.strip("/").replace("/", "_"))
            open(local, "w").write("s3cret-stand-in-0123456789\n")
            toml = toml.replace(path, local)
        open(os.path.join(work, "hookrelay.toml"), "w").write(toml)
PY
  if grep -q "tls.crt" "$work/hookrelay.toml"; then
    # A real certificate for the TLS settings.
    python3 - "$work" <<'PY'
import subprocess, sys, glob
w = sys.argv[1]
crt = [p for p in glob.glob(w + "/*tls.crt")][0]; key = [p for p in glob.glob(w + "/*tls.key")][0]
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
PY
  fi
  KAFKA_PASSWORD=x RABBITMQ_PASSWORD=x "$bin" check --config "$work/hookrelay.toml"
}

# Every ServiceMonitor selects exactly one Service (with the port it scrapes): two
# would scrape each pod twice, doubling every sum(rate()) and breaking one-to-one joins.
one_scraped_service() { "$VENV_PYTHON" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
services = [d for d in docs if d.get("kind") == "Service"]
for sm in (d for d in docs if d.get("kind") == "ServiceMonitor"):
    want = sm["spec"]["selector"].get("matchLabels", {})
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    hits = [s["metadata"]["name"] for s in services
            if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())
            and ports & {p.get("name") for p in s["spec"]["ports"]}]
    if len(hits) != 1:
        sys.exit(f"ServiceMonitor {sm['metadata']['name']} selects {len(hits)} Services ({', '.join(hits)}): want exactly 1")
    print(f"ServiceMonitor {sm['metadata']['name']} scrapes Service {hits[0]} only")
PY
}

for values in "" helm/hookrelay/ci/broker-values.yaml helm/hookrelay/ci/kafka-rabbitmq-values.yaml helm/hookrelay/ci/operate-values.yaml; do
  name="${values:-default values}"
  say "helm: $name"
  args=()
  [ -n "$values" ] && args=(-f "$values")
  "$HELM" lint --strict helm/hookrelay "${args[@]}" >/dev/null
  "$HELM" template hookrelay helm/hookrelay --namespace hookrelay "${args[@]}" >"$work/rendered.yaml"
  k8s_only "$work/rendered.yaml" "$work/k8s.yaml"
  "$KUBERNETES_VALIDATE" --strict --quiet "$work/k8s.yaml"
  check_rendered_config "$work/rendered.yaml"
  one_scraped_service "$work/rendered.yaml"
done

say "helm: a grace period shorter than preStop + drain deadline is refused"
if "$HELM" template hookrelay helm/hookrelay --set terminationGracePeriodSeconds=20 >/dev/null 2>"$work/err"; then
  echo "helm rendered a grace period that cannot cover the drain deadline" >&2; exit 1
fi
grep -q "must exceed" "$work/err"

say "kustomize base"
"$KUBECTL" kustomize deploy/kubernetes >"$work/kustomized.yaml"
"$KUBERNETES_VALIDATE" --strict --quiet "$work/kustomized.yaml"

say "prometheus rules"
"$PROMTOOL" check rules deploy/prometheus/recording.yaml deploy/prometheus/alerts.yaml
cmp deploy/prometheus/alerts.yaml helm/hookrelay/files/alerts.yaml
cmp deploy/prometheus/recording.yaml helm/hookrelay/files/recording.yaml

# --- Alert unit tests and runbook links ---
say "prometheus rule unit tests"
"$PROMTOOL" test rules deploy/prometheus/tests/*.yaml
say "every alert: a runbook section and a test that fires it"
"$VENV_PYTHON" - deploy/prometheus/alerts.yaml docs/runbook.md deploy/prometheus/tests/*.yaml <<'PY'
import re, sys, yaml
alerts_file, runbook, tests = sys.argv[1], sys.argv[2], sys.argv[3:]
base = "https://github.com/hookrelay/hookrelay/blob/main/docs/runbook.md#"
# GitHub's heading anchors: lowercase, punctuation other than - and _ dropped, spaces to -.
text = re.sub(r"^```.*?^```", "", open(runbook).read(), flags=re.M | re.S)
anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
fired = {t["alertname"] for f in tests for g in yaml.safe_load(open(f))["tests"]
         for t in g.get("alert_rule_test", []) if t.get("exp_alerts")}
bad = []
for g in yaml.safe_load(open(alerts_file))["groups"]:
    for r in (r for r in g["rules"] if "alert" in r):
        url = r.get("annotations", {}).get("runbook_url", "")
        if not url.startswith(base) or url[len(base):] not in anchors:
            bad.append(f"{r['alert']}: runbook_url {url!r} is not a heading of {runbook}")
        if r["alert"] not in fired:
            bad.append(f"{r['alert']}: no test in deploy/prometheus/tests/ expects it to fire")
sys.exit("\n".join(bad) or None)
PY
# --- end of alert tests ---

say "grafana dashboard queries"
"$VENV_PYTHON" - deploy/grafana/hookrelay.json "$work/dashboard-rules.yaml" <<'PY'
import json, sys, yaml
d = json.load(open(sys.argv[1]))
rules = []
for p in d["panels"]:
    for t in p["targets"]:
        expr = t["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:panel{p['id']}:{t['refId'].lower()}", "expr": expr})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
PY
"$PROMTOOL" check rules "$work/dashboard-rules.yaml"

say "docker-compose.yml"
"$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec docker-compose.yml

say "all deploy artifacts valid"
