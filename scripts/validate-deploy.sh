#!/usr/bin/env bash
# Offline checks of the deploy artifacts (no cluster, no Docker engine here):
# helm lint/template for the defaults and every values file in helm/hookrelay/ci,
# with every manifest validated against the Kubernetes schemas, the chart's rendered
# hookrelay.toml checked by hookrelay itself, the kustomize base, Prometheus rules and
# the Grafana dashboard's queries through promtool, and docker-compose.yml against
# the compose spec.
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
        # The data volume's paths (spool, dead letters, events) into the scratch
        # directory: check tries them, and this machine's /var/lib is not the pod's.
        toml = toml.replace('"/var/lib/hookrelay/', f'"{work}/data/')
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

# The listen ports of the rendered hookrelay.toml are where everything points: the
# container ports, the probes, every Service's targetPort, the NetworkPolicy's ports
# and the ServiceMonitor's endpoint (names resolved through the container's ports).
ports_follow_config() { "$VENV_PYTHON" - "$1" <<'PY'
import sys, tomllib, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cfg = next(tomllib.loads(d["data"]["hookrelay.toml"]) for d in docs
           if d["kind"] == "ConfigMap" and "hookrelay.toml" in d.get("data", {}))
want = {"webhooks": int(cfg["server"]["listen"].rsplit(":", 1)[1]),
        "admin": int(cfg["server"]["admin_listen"].rsplit(":", 1)[1])}
(pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
main = next(c for c in pod["containers"] if c["name"] == "hookrelay")
named = {p["name"]: p["containerPort"] for p in main["ports"]}
resolve = lambda port: named.get(port) if isinstance(port, str) else port
bad = []
if named != want:
    bad.append(f"containerPorts {named}")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    if resolve(main[probe]["httpGet"]["port"]) != want["admin"]:
        bad.append(f"{probe} port {main[probe]['httpGet']['port']}")
services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
for name, svc in services.items():
    for p in svc["spec"]["ports"]:
        if resolve(p["targetPort"]) != want.get(p["name"]):
            bad.append(f"Service {name} port {p['name']} targetPort {p['targetPort']}")
for np in (d for d in docs if d["kind"] == "NetworkPolicy"):
    got = {resolve(p["port"]) for rule in np["spec"]["ingress"] for p in rule.get("ports", [])}
    if got != set(want.values()):
        bad.append(f"NetworkPolicy {np['metadata']['name']} ports {sorted(got, key=str)}")
for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
    selected = [s for s in services.values() if all(
        s["metadata"].get("labels", {}).get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    for e in sm["spec"]["endpoints"]:
        targets = {resolve(p["targetPort"]) for s in selected for p in s["spec"]["ports"] if p["name"] == e["port"]}
        if targets != {want["admin"]}:
            bad.append(f"ServiceMonitor {sm['metadata']['name']} endpoint {e['port']} reaches {sorted(targets, key=str)}")
if bad:
    sys.exit(f"not on hookrelay.toml's ports (webhooks {want['webhooks']}, admin {want['admin']}): " + "; ".join(bad))
print(f"ports follow hookrelay.toml: webhooks {want['webhooks']}, admin {want['admin']}")
PY
}

# `hookrelay check` runs before hookrelay, on what hookrelay will read: the same
# config file, environment, volume mounts and securityContext.
check_runs_first() { "$VENV_PYTHON" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
(pod,) = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
main = next(c for c in pod["containers"] if c["name"] == "hookrelay")
inits = pod.get("initContainers", [])
if [c["name"] for c in inits] != ["check"]:
    sys.exit(f"init containers {[c['name'] for c in inits]}: want exactly [check]")
(check,) = inits
if check["args"][0] != "check" or check["args"][1:] != main["args"][1:]:
    sys.exit(f"init container args {check['args']} do not check what {main['args']} runs")
for key in ("image", "env", "volumeMounts", "securityContext"):
    if check.get(key) != main.get(key):
        sys.exit(f"init container {key} differs from the main container's: {check.get(key)} != {main.get(key)}")
print(f"hookrelay check runs first on {check['args'][-1]} with {len(check['volumeMounts'])} mounts")
PY
}

# ci/default-values.yaml is the defaults plus the webhook secret they lack on purpose.
for values in helm/hookrelay/ci/*.yaml; do
  say "helm: $values"
  "$HELM" lint --strict helm/hookrelay -f "$values" >/dev/null
  "$HELM" template hookrelay helm/hookrelay --namespace hookrelay -f "$values" >"$work/rendered.yaml"
  k8s_only "$work/rendered.yaml" "$work/k8s.yaml"
  "$KUBERNETES_VALIDATE" --strict --quiet "$work/k8s.yaml"
  check_rendered_config "$work/rendered.yaml"
  one_scraped_service "$work/rendered.yaml"
  ports_follow_config "$work/rendered.yaml"
  check_runs_first "$work/rendered.yaml"
done

say "helm: Chart.yaml's kubeVersion (1.30) is the oldest the manifests are valid on"
for values in helm/hookrelay/ci/*.yaml; do
  "$HELM" template hookrelay helm/hookrelay --namespace hookrelay -f "$values" --kube-version 1.30.0 >"$work/rendered.yaml"
  k8s_only "$work/rendered.yaml" "$work/k8s.yaml"
  "$KUBERNETES_VALIDATE" --strict --quiet --kubernetes-version 1.30.0 "$work/k8s.yaml"
done
if "$HELM" template hookrelay helm/hookrelay -f helm/hookrelay/ci/ports-values.yaml --kube-version 1.29.9 >/dev/null 2>"$work/err"; then
  echo "helm rendered for Kubernetes 1.29, which has no preStop sleep action by default" >&2; exit 1
fi
grep -q "requires kubeVersion" "$work/err"

say "helm: no default webhook secret: the defaults alone are refused, naming what to set"
if "$HELM" template hookrelay helm/hookrelay >/dev/null 2>"$work/err"; then
  echo "helm rendered the default values without a webhook secret" >&2; exit 1
fi
grep -q "no webhook secret: the chart has no default. Set secrets.existingSecret" "$work/err"
grep -q "secrets.values.quickassist=" "$work/err"
if "$HELM" template hookrelay helm/hookrelay --set secrets.values.other=x >/dev/null 2>"$work/err"; then
  echo "helm rendered a Secret without the key the config reads" >&2; exit 1
fi
grep -q 'secrets.values has no "quickassist"' "$work/err"

say "helm: a grace period shorter than preStop + drain deadline is refused"
if "$HELM" template hookrelay helm/hookrelay -f helm/hookrelay/ci/default-values.yaml --set terminationGracePeriodSeconds=20 >/dev/null 2>"$work/err"; then
  echo "helm rendered a grace period that cannot cover the drain deadline" >&2; exit 1
fi
grep -q "must exceed" "$work/err"

say "helm: a listen address the probes cannot reach is refused"
if "$HELM" template hookrelay helm/hookrelay -f helm/hookrelay/ci/ports-values.yaml \
    --set config.server.admin_listen=127.0.0.1:9090 >/dev/null 2>"$work/err"; then
  echo "helm rendered probes against an admin port on loopback" >&2; exit 1
fi
grep -q "listens on loopback" "$work/err"

say "kustomize base: the chart's defaults (REGENERATE=1 rewrites deploy/kubernetes/hookrelay.yaml)"
"$HELM" template hookrelay helm/hookrelay --namespace hookrelay \
  --set secrets.existingSecret=hookrelay-secrets >"$work/rendered.yaml"
"$VENV_PYTHON" - "$work/rendered.yaml" deploy/kubernetes/hookrelay.yaml "${REGENERATE:-}" <<'PY'
import sys, yaml
rendered, base, regenerate = sys.argv[1:]
HEADER = """\
# Plain manifests for users without Helm: the chart's default values with the
# webhook secret in the Secret hookrelay-secrets, which you create (README,
# "Deploying"), minus Helm's bookkeeping. Generated, and compared with the chart, by
# scripts/validate-deploy.sh (REGENERATE=1 scripts/validate-deploy.sh rewrites it).
"""
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
for d in docs:
    for meta in (d["metadata"], d.get("spec", {}).get("template", {}).get("metadata", {})):
        for k in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
            meta.get("labels", {}).pop(k, None)
        notes = {k: v for k, v in meta.get("annotations", {}).items() if not k.startswith("checksum/")}
        if notes:
            meta["annotations"] = notes
        else:
            meta.pop("annotations", None)
class Dumper(yaml.SafeDumper):
    pass
Dumper.add_representer(str, lambda dumper, v: dumper.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))
if regenerate:
    with open(base, "w") as f:
        f.write(HEADER)
        yaml.dump_all(docs, f, Dumper=Dumper, sort_keys=False, default_flow_style=False)
    print(f"wrote {base}")
elif [d for d in yaml.safe_load_all(open(base)) if d] != docs:
    sys.exit(f"{base} differs from the chart's defaults: REGENERATE=1 scripts/validate-deploy.sh")
PY
"$KUBECTL" kustomize deploy/kubernetes >"$work/kustomized.yaml"
"$KUBERNETES_VALIDATE" --strict --quiet "$work/kustomized.yaml"
ports_follow_config "$work/kustomized.yaml"
check_runs_first "$work/kustomized.yaml"

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

say "image: its default config listens where the Dockerfile says, and passes check"
"$VENV_PYTHON" - Dockerfile examples/container.toml "$work" <<'PY'
import re, sys, tomllib
dockerfile, text, work = open(sys.argv[1]).read(), open(sys.argv[2]).read(), sys.argv[3]
if not re.search(r"^COPY examples/container.toml /etc/hookrelay/hookrelay.toml$", dockerfile, re.M):
    sys.exit("the Dockerfile does not install examples/container.toml as its default config")
server = tomllib.loads(text)["server"]
addrs = {k: server[k].rsplit(":", 1) for k in ("listen", "admin_listen")}
for k, (host, port) in addrs.items():
    if host not in ("0.0.0.0", "[::]"):
        sys.exit(f"examples/container.toml: server.{k} = {server[k]!r}: `docker run -p` cannot reach it")
exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split())
if exposed != {port for _, port in addrs.values()}:
    sys.exit(f"Dockerfile EXPOSE {sorted(exposed)} != the config's ports {[p for _, p in addrs.values()]}")
health = re.search(r'"--admin", "127.0.0.1:(\d+)"', dockerfile).group(1)
if health != addrs["admin_listen"][1]:
    sys.exit(f"HEALTHCHECK asks port {health}, the admin listener is on {addrs['admin_listen'][1]}")
# The volume's paths into the scratch directory, for check to try them.
open(f"{work}/container.toml", "w").write(text.replace("/var/lib/hookrelay", f"{work}/volume"))
print(f"examples/container.toml: webhooks {server['listen']}, admin {server['admin_listen']}")
PY
QUICKASSIST_WEBHOOK_SECRET=dev-secret "$bin" check --config "$work/container.toml"

say "release workflow"
# actionlint also runs shellcheck on the run: scripts where shellcheck is installed.
"$ACTIONLINT" .github/workflows/*.yml

say "docker-compose.yml"
"$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec docker-compose.yml

say "all deploy artifacts valid"
