//! The Kubernetes contract of medpool, tested without Kubernetes (issue 7).
//!
//! 1. [`chart_lints_renders_validates_and_keeps_its_promises`]: `scripts/chart-test.sh` (tools from
//!    scripts/k8s-tools.sh, its output shown) lints the chart strictly with helm 3 and helm 4,
//!    renders the default values and every `helm/medpool/ci/*-values.yaml` (hostNetwork, 5 replicas,
//!    token and TLS from existing Secrets, metrics), validates every object against the Kubernetes
//!    schemas of 1.27, 1.31 and 1.37, runs hadolint on the Dockerfile and shellcheck on the hook
//!    scripts, and checks that wrong values are refused. This test then reads the rendered objects and
//!    checks the properties that matter: ordinal-based identity, the volume claim, the PDB, the probes,
//!    the preStop drain, the Services; and the Dockerfile, the schema and the chart README.
//! 2. [`startup_contract_rolling_restart_under_load`]: three `medpool serve` processes started exactly
//!    as the rendered StatefulSet starts its pods, then a rolling restart in reverse ordinal order, as
//!    the StatefulSet controller does it, under SIPp call load; no call may fail.
//!
//! How a pod is emulated (`Pod`): the entrypoint and environment of the image (read from the
//! Dockerfile), then the container's `env` exactly as rendered, resolved as the kubelet does it
//! (`fieldRef`, `secretKeyRef` from the rendered Secret, `$(VAR)` references to earlier variables);
//! volumes are folders (the claim `data-medpool-N` kept across restarts, the ConfigMap's files
//! written out, emptyDirs new at each start). Two things a process on one machine cannot have are
//! stood in for, and only these: (a) each pod's network namespace is one loopback address,
//! 127.0.(91+N).1, so binding 0.0.0.0 or connecting to 127.0.0.1 inside pod N means that address;
//! (b) cluster DNS is a hosts file (`MEDPOOL_HOSTS_FILE`, the one variable the chart does not set)
//! mapping `medpool-N.medpool-peers.default.svc.cluster.local` to the pod addresses and the SIP
//! Service name to the test's Service. The Service is a UDP forwarder at 127.0.90.100:5060 that
//! sends each client's traffic to one ready pod (sessionAffinity ClientIP) and names the real source
//! in `X-Medpool-Source` (the chart's `sip.trustedForwarders`), which kube-proxy does by keeping
//! the source address. A pod is ready when its own `medpool ctl -o json status` shows a leader and
//! itself Active (what the gRPC readiness probe reports once the admin API serves grpc.health.v1).
//!
//! Every process is stopped by PID in a guard's `Drop`, also when a test panics. Addresses:
//! 127.0.90.x (Service .100, gateways .21/.22, PBXs .50/.51) and 127.0.91-93.1 (pods).
//!
//! These tests drive real processes on the wall clock: there is no tokio timer to pause, so they use
//! `std::time::Instant` and `std::thread::sleep`, which clippy.toml bans in timer code.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// Shared: the repository, the tools, one test at a time

/// Both tests are heavy (helm and validators; a 3-node pool with SIPp on 2 cores): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn repo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

/// A scratch folder, removed on drop unless the test failed (then its path is printed).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("medpool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Paths of the chart tools.
#[derive(Clone, Debug)]
struct Tools {
    helm3: PathBuf,
    python: PathBuf,
}

/// Installs the tools with the repository's scripts/k8s-tools.sh (its output goes straight to the terminal)
/// once per test process. Fails the test, loudly, when they cannot be installed.
fn tools() -> Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let script = std::env::var_os("MEDPOOL_K8S_TOOLS_SCRIPT")
                .map_or_else(|| repo().join("scripts/k8s-tools.sh"), PathBuf::from);
            let dir = std::env::var_os("MEDPOOL_K8S_TOOLS").map_or_else(
                || {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/medpool-k8s-tools")
                },
                PathBuf::from,
            );
            if !script.exists() {
                return Err(format!(
                    "{} not found: the chart tools cannot be installed",
                    script.display()
                ));
            }
            eprintln!(
                "== installing the chart tools: bash {} {}",
                script.display(),
                dir.display()
            );
            let status = Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !status.success() {
                return Err(format!(
                    "{} failed ({status}): see its output above",
                    script.display()
                ));
            }
            let t = Tools {
                helm3: dir.join("helm3/helm"),
                python: dir.join("venv/bin/python"),
            };
            for p in [&t.helm3, &t.python] {
                if !p.exists() {
                    return Err(format!("{} missing after the install", p.display()));
                }
            }
            Ok(t)
        })
        .clone()
        .unwrap_or_else(|e| panic!("THE CHART TOOLS ARE NOT AVAILABLE, the test cannot run: {e}"))
}

/// A multi-document YAML file as the JSON list of its objects (PyYAML from the tools' venv).
fn yaml_to_json(tools: &Tools, yaml: &Path) -> Vec<Value> {
    let out = Command::new(&tools.python)
        .arg("-c")
        .arg(
            "import json,sys,yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        )
        .arg(yaml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot parse {}: {}",
        yaml.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `helm template medpool helm/medpool -f VALUES` into `out`, parsed.
fn render(tools: &Tools, values: &Path, out: &Path) -> Vec<Value> {
    let o = Command::new(&tools.helm3)
        .args(["template", "medpool"])
        .arg(repo().join("helm/medpool"))
        .args(["--namespace", "default", "-f"])
        .arg(values)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(out, &o.stdout).unwrap();
    yaml_to_json(tools, out)
}

// ------------------------------------------------------------------------------------------------
// Reading rendered objects

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn has(objs: &[Value], kind: &str, name: &str) -> bool {
    objs.iter()
        .any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn container(sts: &Value) -> &Value {
    let cs = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1, "one container per pod");
    &cs[0]
}

/// The container's env entries by name, in order.
fn env_list(c: &Value) -> Vec<(String, Value)> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (s(&e["name"]).to_owned(), e.clone()))
        .collect()
}

fn env_value(c: &Value, name: &str) -> Option<String> {
    env_list(c)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, e)| e["value"].as_str().map(str::to_owned))
}

fn port_of(c: &Value, name: &str) -> Option<u64> {
    c["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

fn hook_script(c: &Value, hook: &str) -> String {
    let cmd = c["lifecycle"][hook]["exec"]["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no {hook} exec hook"));
    assert_eq!(cmd[0], "/bin/sh", "{hook} runs through /bin/sh");
    assert_eq!(cmd[1], "-c");
    s(&cmd[2]).to_owned()
}

fn b64decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let compact: String = text.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text}"))
}

// ------------------------------------------------------------------------------------------------
// The Dockerfile (runtime stage): what the image gives a container

struct Image {
    entrypoint: Vec<String>,
    env: Vec<(String, String)>,
    user: String,
    exposed: Vec<String>,
    stages: Vec<String>,
    text: String,
}

fn dockerfile() -> Image {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        if let Some(x) = t.strip_suffix('\\') {
            cur.push_str(x);
            cur.push(' ');
        } else {
            cur.push_str(t);
            if !cur.trim().is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    let mut image = Image {
        entrypoint: Vec::new(),
        env: Vec::new(),
        user: String::new(),
        exposed: Vec::new(),
        stages: Vec::new(),
        text: text.clone(),
    };
    for l in lines {
        let (instr, rest) = l.split_once(' ').unwrap_or((&l, ""));
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                image.stages.push(rest.trim().to_owned());
                // Only the last stage makes the image.
                image.env.clear();
                image.entrypoint.clear();
                image.user.clear();
                image.exposed.clear();
            }
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
                    image
                        .env
                        .push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            "ENTRYPOINT" => {
                image.entrypoint =
                    serde_json::from_str(rest.trim()).expect("ENTRYPOINT in exec form");
            }
            "USER" => image.user = rest.trim().to_owned(),
            "EXPOSE" => image
                .exposed
                .extend(rest.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    image
}

// ================================================================================================
// 1. The chart: lint, render, validate (scripts/chart-test.sh), then the properties that matter

#[test]
fn chart_lints_renders_validates_and_keeps_its_promises() {
    let _one = serial();
    let scratch = Scratch::new("chart");
    let out = scratch.path().join("rendered");
    // The tools first (shown), then the script (shown): helm lint/template, kubernetes-validate,
    // yamllint, hadolint, shellcheck, refusals.
    let tools = tools();
    eprintln!("== scripts/chart-test.sh {}", out.display());
    let status = Command::new("bash")
        .arg(repo().join("scripts/chart-test.sh"))
        .arg(&out)
        .current_dir(repo())
        .stdin(Stdio::null())
        .status()
        .expect("cannot run scripts/chart-test.sh");
    assert!(
        status.success(),
        "scripts/chart-test.sh failed ({status}): its output above says which check"
    );

    let load = |set: &str| -> Vec<Value> {
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{set}.json"))).unwrap())
            .unwrap()
    };
    let sets = [
        "default",
        "hostnetwork",
        "five-replicas",
        "existing-secret-tls",
        "metrics",
    ];
    for set in sets {
        let objs = load(set);
        eprintln!(
            "== properties of the [{set}] render ({} objects)",
            objs.len()
        );
        common_properties(set, &objs);
    }

    // --- default values
    let objs = load("default");
    let sts = find(&objs, "StatefulSet", "medpool");
    let c = container(sts);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(env_value(c, "MEDPOOL_VOTERS").as_deref(), Some("3"));
    assert_eq!(
        env_value(c, "MEDPOOL_ADVERTISE").as_deref(),
        Some("medpool-sip.$(POD_NAMESPACE).svc.cluster.local:5060"),
        "nodes advertise the SIP Service"
    );
    let sip = find(&objs, "Service", "medpool-sip");
    assert_eq!(sip["spec"]["type"], "ClusterIP");
    assert_eq!(sip["spec"]["sessionAffinity"], "ClientIP");
    assert!(
        sip["spec"].get("externalTrafficPolicy").is_none(),
        "externalTrafficPolicy is only valid for NodePort/LoadBalancer"
    );
    let secret = find(&objs, "Secret", "medpool-admin");
    let token = b64decode(s(&secret["data"]["token"]));
    assert!(token.len() >= 32, "a random token of 48 characters");
    assert!(
        hook_script(c, "preStop").contains(
            "medpool ctl --server 127.0.0.1:7001 --timeout \"${left}\" node drain \"${id}\" --wait"
        ),
        "the default preStop drains through the admin API"
    );
    assert!(
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "metrics")
    );
    let cm = find(&objs, "ConfigMap", "medpool-config");
    assert!(s(&cm["data"]["medpool.toml"]).contains("[node]"));

    // --- hostNetwork
    let objs = load("hostnetwork");
    let sts = find(&objs, "StatefulSet", "medpool");
    let pod = &sts["spec"]["template"]["spec"];
    let c = container(sts);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_array(),
        "hostNetwork forces hard anti-affinity (antiAffinity: soft was asked)"
    );
    assert_eq!(
        env_value(c, "MEDPOOL_ADVERTISE").as_deref(),
        Some("$(HOST_IP):5060"),
        "under hostNetwork a node advertises its node's address"
    );
    assert!(
        !has(&objs, "Service", "medpool-sip"),
        "sip.service.enabled=false"
    );
    assert_eq!(
        env_value(c, "HOSTNAME").as_deref(),
        Some("$(POD_NAME)"),
        "HOSTNAME is the pod name also under hostNetwork"
    );

    // --- five replicas, LoadBalancer
    let objs = load("five-replicas");
    let sts = find(&objs, "StatefulSet", "medpool");
    let c = container(sts);
    assert_eq!(sts["spec"]["replicas"], 5);
    assert_eq!(env_value(c, "MEDPOOL_VOTERS").as_deref(), Some("5"));
    assert_eq!(
        env_value(c, "MEDPOOL_ADVERTISE").as_deref(),
        Some("sip.example.net:5060")
    );
    let sip = find(&objs, "Service", "medpool-sip");
    assert_eq!(sip["spec"]["type"], "LoadBalancer");
    assert_eq!(sip["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        sip["spec"]["loadBalancerSourceRanges"][1],
        "198.51.100.0/24"
    );
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(claim["storageClassName"], "fast-ssd");
    assert_eq!(
        find(&objs, "PodDisruptionBudget", "medpool")["spec"]["maxUnavailable"],
        1,
        "five nodes still lose at most one at a time"
    );

    // --- token and TLS from existing Secrets
    let objs = load("existing-secret-tls");
    assert!(
        !objs.iter().any(|o| o["kind"] == "Secret"),
        "no Secret is rendered when existing ones are named"
    );
    let sts = find(&objs, "StatefulSet", "medpool");
    let c = container(sts);
    let token = env_list(c)
        .into_iter()
        .find(|(n, _)| n == "MEDPOOL_ADMIN_TOKEN")
        .expect("MEDPOOL_ADMIN_TOKEN")
        .1;
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "medpool-admin-token"
    );
    assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "admin-token");
    assert_eq!(
        env_value(c, "MEDPOOL_ADMIN_TLS_CERT").as_deref(),
        Some("/etc/medpool/tls/tls.crt")
    );
    let vols = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        vols.iter()
            .any(|v| v["secret"]["secretName"] == "medpool-admin-tls"),
        "the TLS Secret is mounted"
    );
    assert_eq!(
        env_value(c, "MEDPOOL_ADMIN_TLS_CA").as_deref(),
        Some("/etc/medpool/tls/tls.crt"),
        "without caKey the certificate is its own CA"
    );
    assert!(
        hook_script(c, "preStop").contains(
            "medpool ctl --server https://127.0.0.1:7001 --timeout \"${left}\" node drain"
        ),
        "the hooks speak TLS to a TLS admin port"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["tcpSocket"]["port"], "admin",
            "{probe}: the kubelet's gRPC probe speaks no TLS, so a TLS admin port is probed over TCP"
        );
    }

    // --- metrics, ServiceMonitor, existing ConfigMap
    let objs = load("metrics");
    let sts = find(&objs, "StatefulSet", "medpool");
    let c = container(sts);
    assert_eq!(port_of(c, "metrics"), Some(9090));
    assert_eq!(
        env_value(c, "MEDPOOL_METRICS_LISTEN").as_deref(),
        Some("0.0.0.0:9090")
    );
    let sm = find(&objs, "ServiceMonitor", "medpool");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let peers = find(&objs, "Service", "medpool-peers");
    let selected = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selected {
        assert_eq!(
            &peers["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the peers Service"
        );
    }
    assert!(
        peers["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "metrics"),
        "metrics are scraped through the peers Service (every pod, ready or not)"
    );
    // No pool-configuration ConfigMap (an existing one is used); the dashboard ConfigMap is there.
    assert!(!objs.iter().any(|o| {
        o["kind"] == "ConfigMap"
            && !o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-dashboard")
    }));
    assert!(objs.iter().any(|o| {
        o["kind"] == "ConfigMap"
            && o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-dashboard")
            && o["data"]["medpool.json"]
                .as_str()
                .is_some_and(|d| d.contains("medpool_post_dial_delay_seconds_bucket"))
    }));
    assert!(
        vols_of(sts)
            .iter()
            .any(|v| v["configMap"]["name"] == "medpool-pool-config")
    );
    let pre = hook_script(c, "preStop");
    assert!(pre.contains(
        "medpool ctl --server 127.0.0.1:7001 --timeout \"${left}\" node drain \"${id}\" --wait"
    ));
    assert!(
        hook_script(c, "postStart")
            .contains("medpool ctl --server 127.0.0.1:7001 node undrain \"${id}\"")
    );

    // --- the image
    let image = dockerfile();
    assert!(
        image.stages.len() >= 2,
        "multi-stage build: {:?}",
        image.stages
    );
    assert!(
        image.stages[0].starts_with("rust:") && image.stages[0].ends_with(" AS build"),
        "built with cargo in a rust image: {}",
        image.stages[0]
    );
    let runtime = image.stages.last().unwrap();
    assert!(
        runtime.starts_with("debian:") && runtime.contains("-slim"),
        "slim Debian runtime: {runtime}"
    );
    assert!(
        image.stages[0].contains("-slim-${DEBIAN_SUITE}")
            && runtime.contains("debian:${DEBIAN_SUITE}-slim"),
        "build and runtime stages on the same Debian release (the binary links its glibc)"
    );
    assert_eq!(image.entrypoint, ["/usr/local/bin/medpool", "serve"]);
    assert_eq!(image.user, "10001:10001", "a fixed non-root uid:gid");
    for p in ["5060/udp", "5060/tcp", "7000/tcp", "7001/tcp", "9090/tcp"] {
        assert!(image.exposed.iter().any(|e| e == p), "EXPOSE {p}");
    }
    let toolchain = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
    let pinned = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        image.text.contains(&format!("ARG RUST_VERSION={pinned}")),
        "the image builds with the toolchain rust-toolchain.toml pins ({pinned})"
    );
    assert!(
        image
            .text
            .contains("cargo build --release --locked -p medpool")
    );
    let sts_default = load("default");
    let sts_default = find(&sts_default, "StatefulSet", "medpool");
    assert_eq!(
        sts_default["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 10001,
        "the chart runs the image's user"
    );
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for p in ["**/target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore has {p}"
        );
    }

    // --- every value is in the schema and in the README
    let values = yaml_to_json(&tools, &repo().join("helm/medpool/values.yaml"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("helm/medpool/values.schema.json")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(repo().join("helm/medpool/README.md")).unwrap();
    let mut paths = Vec::new();
    leaf_paths(&values[0], "", &mut paths);
    assert!(paths.len() > 60, "values.yaml has {} leaves", paths.len());
    let mut missing_schema = Vec::new();
    let mut missing_readme = Vec::new();
    for p in &paths {
        if !schema_has(&schema, p) {
            missing_schema.push(p.clone());
        }
        if !readme.contains(&format!("| `{p}` |")) {
            missing_readme.push(p.clone());
        }
    }
    assert!(
        missing_schema.is_empty(),
        "values without a schema: {missing_schema:?}"
    );
    assert!(
        missing_readme.is_empty(),
        "values not in helm/medpool/README.md: {missing_readme:?}"
    );
    eprintln!(
        "== chart: {} values, each in the schema and the README; 5 renders checked",
        paths.len()
    );
}

fn vols_of(sts: &Value) -> Vec<Value> {
    sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone()
}

/// The value paths of values.yaml down to leaves (a map whose values are documented as a whole,
/// like `resources` or `podSecurityContext`, is one path: it stops where the schema stops).
fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    const WHOLE: &[&str] = &[
        "resources",
        "podSecurityContext",
        "securityContext",
        "affinity",
        "nodeSelector",
        "podAnnotations",
        "podLabels",
        "sip.service.annotations",
        "admin.service.annotations",
        "serviceAccount.annotations",
        "persistence.annotations",
        "metrics.serviceMonitor.labels",
        "persistence.retentionPolicy",
    ];
    match v {
        Value::Object(m) if !WHOLE.contains(&prefix) && !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(x, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn schema_has(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for part in path.split('.') {
        match node["properties"].get(part) {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.get("type").is_some() || node.get("oneOf").is_some() || node.get("anyOf").is_some()
}

/// What every render must have.
fn common_properties(set: &str, objs: &[Value]) {
    let sts = find(objs, "StatefulSet", "medpool");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let c = container(sts);
    let ctx = |what: &str| format!("[{set}] {what}");

    // Identity: all pods at once, ordinal from the pod name, peers through the headless Service.
    assert_eq!(
        spec["podManagementPolicy"],
        "Parallel",
        "{}",
        ctx("Parallel")
    );
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    let peers_name = s(&spec["serviceName"]);
    assert_eq!(peers_name, "medpool-peers");
    let peers = find(objs, "Service", peers_name);
    assert_eq!(
        peers["spec"]["clusterIP"],
        "None",
        "{}",
        ctx("headless peers Service")
    );
    assert_eq!(
        peers["spec"]["publishNotReadyAddresses"],
        true,
        "{}",
        ctx("peers resolvable before ready, so a pool can form")
    );
    let selector = spec["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(
            &spec["template"]["metadata"]["labels"][k],
            v,
            "{}",
            ctx("pod labels")
        );
        assert_eq!(
            &peers["spec"]["selector"][k],
            v,
            "{}",
            ctx("peers selector")
        );
    }
    let env = env_list(c);
    let pos = |n: &str| env.iter().position(|(x, _)| x == n);
    let pod_name = &env[pos("POD_NAME").expect("POD_NAME")].1;
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env[pos("POD_NAMESPACE").unwrap()].1["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_value(c, "HOSTNAME").as_deref(),
        Some("$(POD_NAME)"),
        "{}",
        ctx("HOSTNAME")
    );
    assert!(
        pos("POD_NAME") < pos("HOSTNAME"),
        "$(POD_NAME) must be defined before its use"
    );
    assert!(pos("POD_NAMESPACE") < pos("MEDPOOL_PEER_DOMAIN"));
    let domain = format!("{peers_name}.$(POD_NAMESPACE).svc.cluster.local");
    assert_eq!(
        env_value(c, "MEDPOOL_PEER_DOMAIN").as_deref(),
        Some(domain.as_str())
    );
    let internal = port_of(c, "internal").unwrap();
    assert_eq!(
        env_value(c, "MEDPOOL_RAFT_ADVERTISE"),
        Some(format!("$(POD_NAME).{domain}:{internal}")),
        "{}",
        ctx("peers reach a node by its stable DNS name")
    );
    assert_eq!(
        env_value(c, "MEDPOOL_RAFT_LISTEN"),
        Some(format!("0.0.0.0:{internal}"))
    );
    assert!(
        pos("MEDPOOL_NODE_ID").is_none() && pos("MEDPOOL_JOIN").is_none(),
        "{}",
        ctx("node id and join address come from the ordinal, never from fixed values")
    );
    assert_eq!(
        peers["spec"]["ports"][0]["port"].as_u64(),
        Some(internal),
        "{}",
        ctx("the peers Service carries the internal port")
    );

    // The volume claim: one per pod, mounted where the data folder is.
    let claims = spec["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert_eq!(claims[0]["spec"]["accessModes"][0], "ReadWriteOnce");
    assert!(claims[0]["spec"]["resources"]["requests"]["storage"].is_string());
    let data_dir = env_value(c, "MEDPOOL_DATA_DIR").unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == data_dir.as_str()),
        "{}",
        ctx("the claim is mounted at MEDPOOL_DATA_DIR")
    );
    // The configuration seed is mounted where MEDPOOL_CONFIG points.
    let config = env_value(c, "MEDPOOL_CONFIG").unwrap();
    let config_dir = Path::new(&config).parent().unwrap().to_str().unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "config" && m["mountPath"] == config_dir)
    );

    // The PDB: at most one pool member away.
    let pdb = find(objs, "PodDisruptionBudget", "medpool");
    assert_eq!(
        pdb["spec"]["maxUnavailable"],
        1,
        "{}",
        ctx("PDB maxUnavailable 1")
    );
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"].as_object().unwrap(),
        selector
    );

    // Probes: grpc.health.v1 on the admin port (TCP when the admin port speaks TLS).
    let admin = port_of(c, "admin").unwrap();
    let tls = env_value(c, "MEDPOOL_ADMIN_TLS_CERT").is_some();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        if tls {
            assert_eq!(c[probe]["tcpSocket"]["port"], "admin", "{}", ctx(probe));
        } else {
            assert_eq!(
                c[probe]["grpc"]["port"].as_u64(),
                Some(admin),
                "{}",
                ctx(probe)
            );
        }
    }
    assert!(
        c["startupProbe"]["periodSeconds"].as_u64().unwrap()
            * c["startupProbe"]["failureThreshold"].as_u64().unwrap()
            >= 60,
        "{}",
        ctx("a minute at least to join and catch up")
    );
    assert_eq!(
        env_value(c, "MEDPOOL_ADMIN_LISTEN"),
        Some(format!("0.0.0.0:{admin}")),
        "{}",
        ctx("the kubelet probes the pod IP")
    );

    // preStop: drain itself, wait until its shards are gone; the grace period outlasts it.
    let pre = hook_script(c, "preStop");
    assert!(
        pre.contains("id=\"${MEDPOOL_NODE_ID:-${POD_NAME##*-}}\""),
        "{}",
        ctx("own id")
    );
    assert!(
        pre.contains("medpool ctl --server ")
            && pre.contains("node drain \"${id}\" --wait; then")
            && pre.contains("drained (no shard left)"),
        "{}",
        ctx(
            "the preStop drains with `medpool ctl node drain --wait`: done when the node owns no shard"
        )
    );
    assert!(
        !pre.contains("medpool pool") && !pre.contains("awk"),
        "{}",
        ctx("the hooks use `medpool ctl` only")
    );
    let deadline: u64 = pre
        .split("$(date +%s) + ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("drain deadline");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown: u64 = env_value(c, "MEDPOOL_SHUTDOWN_GRACE")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace > deadline + shutdown,
        "{}",
        ctx(&format!(
            "terminationGracePeriodSeconds {grace} must outlast the drain ({deadline} s) + shutdown ({shutdown} s)"
        ))
    );
    let post = hook_script(c, "postStart");
    assert!(
        post.contains("undrain \"${id}\""),
        "{}",
        ctx("postStart undrains")
    );

    // Security: non-root, read-only root, no privilege; resources; anti-affinity.
    let sc = &c["securityContext"];
    assert_eq!(
        sc["readOnlyRootFilesystem"],
        true,
        "{}",
        ctx("read-only root")
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        pod["securityContext"]["fsGroup"].is_u64(),
        "{}",
        ctx("volume writable")
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let anti = &pod["affinity"]["podAntiAffinity"];
    assert!(anti.is_object(), "{}", ctx("pod anti-affinity"));
    // Ports: SIP UDP and TCP, internal, admin.
    assert_eq!(port_of(c, "sip-udp"), port_of(c, "sip-tcp"));
    // The image's entrypoint is `medpool serve`: the chart adds no command or args.
    assert!(c.get("command").is_none() && c.get("args").is_none());

    // Services: SIP (UDP and TCP) when enabled, admin.
    if has(objs, "Service", "medpool-sip") {
        let sip = find(objs, "Service", "medpool-sip");
        let protos: Vec<&str> = sip["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| s(&p["protocol"]))
            .collect();
        assert_eq!(protos, ["UDP", "TCP"], "{}", ctx("SIP over UDP and TCP"));
        assert!(sip["spec"]["sessionAffinity"].is_string());
    }
    let adm = find(objs, "Service", "medpool-admin");
    assert_eq!(adm["spec"]["ports"][0]["port"].as_u64(), Some(admin));
    // The token's Secret reference resolves to a rendered Secret or a named existing one.
    let token = &env[pos("MEDPOOL_ADMIN_TOKEN").unwrap()].1["valueFrom"]["secretKeyRef"];
    assert!(token["name"].is_string() && token["key"].is_string());
}

// ================================================================================================
// 2. The start-up contract: pods as the StatefulSet starts them, a rolling restart under calls

const NAMESPACE: &str = "default";
const SERVICE_IP: &str = "127.0.90.100";
const GATEWAYS: [&str; 2] = ["127.0.90.21", "127.0.90.22"];
const PBXS: [&str; 2] = ["127.0.90.50", "127.0.90.51"];
const PODS: usize = 3;

fn pod_ip(ordinal: usize) -> String {
    format!("127.0.{}.1", 91 + ordinal)
}

/// The trunks bypass the relay: this test's SIPp peers send no RTP and their scenarios expect no
/// re-INVITE, which a relayed call moved in the rolling restart sends to re-anchor its media.
fn seed_config() -> String {
    let mut t = String::from(
        "# the pool configuration seed of the start-up contract test\n[node]\nmax_calls = 20000\nmax_tries = 2\n",
    );
    for (i, pbx) in PBXS.iter().enumerate() {
        write!(
            t,
            "\n[[trunk]]\nname = \"pbx{n}\"\naddress = \"{pbx}\"\nside = \"internal\"\nmatch_any_port = true\nusages = [\"outbound\"]\nmedia = \"bypass\"\n",
            n = i + 1
        )
        .unwrap();
    }
    for (i, gw) in GATEWAYS.iter().enumerate() {
        write!(
            t,
            "\n[[trunk]]\nname = \"gw{n}\"\naddress = \"{gw}\"\nport = 5060\ntransport = \"udp\"\nside = \"gateway\"\noptions_interval_ms = 1000\ndown_after = 3\nup_after = 1\nusages = [\"inbound\"]\nmedia = \"bypass\"\n",
            n = i + 1
        )
        .unwrap();
    }
    t.push_str(
        "\n[[route]]\nname = \"from-pstn\"\npattern = '.*'\nusage = \"inbound\"\ntrunks = [\"pbx1\"]\n\
         \n[[route]]\nname = \"to-gateways\"\npattern = '.*'\nusage = \"outbound\"\n\
         trunks = [{ trunk = \"gw1\", priority = 1 }, { trunk = \"gw2\", priority = 1 }]\n",
    );
    t
}

/// A child process stopped by PID (SIGTERM, then SIGKILL after `grace`) when dropped.
struct Proc {
    child: Option<Child>,
    name: String,
    grace: Duration,
}

impl Proc {
    fn new(child: Child, name: &str, grace: Duration) -> Self {
        Proc {
            child: Some(child),
            name: name.to_owned(),
            grace,
        }
    }
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
    fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    /// SIGTERM, wait up to the grace, then SIGKILL. Returns how it ended and whether it was killed.
    fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        self.child.as_ref()?;
        if let Some(s) = self.try_wait() {
            self.child = None;
            return Some((s, false));
        }
        self.signal("TERM");
        if let Some(s) = self.wait_timeout(self.grace) {
            self.child = None;
            return Some((s, false));
        }
        let mut c = self.child.take()?;
        eprintln!(
            "{} (pid {}) ignored SIGTERM for {:?}: SIGKILL",
            self.name,
            c.id(),
            self.grace
        );
        let _ = c.kill();
        c.wait().ok().map(|s| (s, true))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the rendered chart says about a pod, and how this test stands in for the kubelet.
struct PodTemplate {
    /// The container's env entries, as rendered.
    env: Vec<Value>,
    /// volumeMounts: (volume name, mountPath).
    mounts: Vec<(String, String)>,
    /// volumes by name.
    volumes: HashMap<String, Value>,
    post_start: Option<Vec<String>>,
    pre_stop: Vec<String>,
    termination_grace: Duration,
    min_ready: Duration,
    image: Image,
    objects: Vec<Value>,
}

impl PodTemplate {
    fn from_render(objects: Vec<Value>) -> Self {
        let sts = find(&objects, "StatefulSet", "medpool").clone();
        let c = container(&sts).clone();
        let hook = |h: &str| -> Option<Vec<String>> {
            c["lifecycle"][h]["exec"]["command"]
                .as_array()
                .map(|a| a.iter().map(|x| s(x).to_owned()).collect())
        };
        assert!(c.get("command").is_none() && c.get("args").is_none());
        PodTemplate {
            env: c["env"].as_array().unwrap().clone(),
            mounts: c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (s(&m["name"]).to_owned(), s(&m["mountPath"]).to_owned()))
                .collect(),
            volumes: sts["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (s(&v["name"]).to_owned(), v.clone()))
                .collect(),
            post_start: hook("postStart"),
            pre_stop: hook("preStop").expect("a preStop hook"),
            termination_grace: Duration::from_secs(
                sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap(),
            ),
            min_ready: Duration::from_secs(sts["spec"]["minReadySeconds"].as_u64().unwrap_or(0)),
            image: dockerfile(),
            objects,
        }
    }

    fn secret_value(&self, name: &str, key: &str) -> String {
        let secret = find(&self.objects, "Secret", name);
        String::from_utf8(b64decode(s(&secret["data"][key]))).unwrap()
    }

    fn configmap_value(&self, name: &str, key: &str) -> String {
        s(&find(&self.objects, "ConfigMap", name)["data"][key]).to_owned()
    }
}

/// The kubelet's `$(VAR)` expansion: references to variables defined earlier are replaced, `$$` is
/// a literal `$`, anything else is left as written.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix('(')
            && let Some(end) = a.find(')')
            && let Some(v) = defined.get(&a[..end])
        {
            out.push_str(v);
            rest = &a[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One pod of the StatefulSet: its folders, its process, its hooks.
struct Pod {
    ordinal: usize,
    name: String,
    ip: String,
    dir: PathBuf,
    env: Vec<(String, String)>,
    argv: Vec<String>,
    proc: Option<Proc>,
    starts: usize,
}

impl Pod {
    fn new(t: &PodTemplate, ordinal: usize, root: &Path, bin: &Path, hosts: &Path) -> Self {
        let name = format!("medpool-{ordinal}");
        let ip = pod_ip(ordinal);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        // Volumes: the claim data-<pod> persists; the ConfigMap's items are written out; emptyDirs
        // are made at each start (see `start`); Secrets are written out.
        let mut mount_map: Vec<(String, PathBuf)> = Vec::new();
        for (vol, mount) in &t.mounts {
            let host = dir.join(format!("vol-{vol}"));
            std::fs::create_dir_all(&host).unwrap();
            if vol == "data" {
                // volumeClaimTemplates "data": PVC data-medpool-N, kept across restarts.
            } else if let Some(v) = t.volumes.get(vol) {
                if let Some(cm) = v.get("configMap") {
                    for item in cm["items"].as_array().unwrap() {
                        let text = t.configmap_value(s(&cm["name"]), s(&item["key"]));
                        std::fs::write(host.join(s(&item["path"])), text).unwrap();
                    }
                } else if let Some(sec) = v.get("secret") {
                    panic!("secret volume {sec} not expected in the start-up contract values");
                }
            }
            mount_map.push((mount.clone(), host));
        }
        // The pod's network namespace: 0.0.0.0 and 127.0.0.1 inside it are its address.
        let netns = |v: &str| {
            v.replace("0.0.0.0:", &format!("{ip}:"))
                .replace("127.0.0.1:", &format!("{ip}:"))
        };
        // A path under a mountPath is that volume's folder (the longest mountPath wins, once).
        let remap = |v: String| -> String {
            let v = netns(&v);
            let best = mount_map
                .iter()
                .filter(|(mount, _)| v == *mount || v.starts_with(&format!("{mount}/")))
                .max_by_key(|(mount, _)| mount.len());
            match best {
                Some((mount, host)) => format!("{}{}", host.display(), &v[mount.len()..]),
                None => v,
            }
        };
        // Environment: the image's ENV, then the container's env resolved as the kubelet does.
        let mut env: BTreeMap<String, String> = t.image.env.iter().cloned().collect();
        let mut defined: BTreeMap<String, String> = BTreeMap::new();
        for e in &t.env {
            let key = s(&e["name"]).to_owned();
            let value = if let Some(v) = e.get("value") {
                expand(s(v), &defined)
            } else if let Some(f) = e["valueFrom"].get("fieldRef") {
                match s(&f["fieldPath"]) {
                    "metadata.name" => name.clone(),
                    "metadata.namespace" => NAMESPACE.to_owned(),
                    "status.podIP" | "status.hostIP" => ip.clone(),
                    other => panic!("fieldRef {other} not emulated"),
                }
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                t.secret_value(s(&r["name"]), s(&r["key"]))
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                t.configmap_value(s(&r["name"]), s(&r["key"]))
            } else {
                panic!("env {key}: source not emulated: {e}")
            };
            defined.insert(key.clone(), value.clone());
            env.insert(key, value);
        }
        let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, remap(v))).collect();
        // Not from the chart: the stand-in for cluster DNS, and PATH (the image has medpool in
        // /usr/local/bin; here it is the tested binary's folder).
        env.push(("MEDPOOL_HOSTS_FILE".into(), hosts.display().to_string()));
        env.push((
            "PATH".into(),
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                bin.parent().unwrap().display()
            ),
        ));
        env.push(("NO_COLOR".into(), "1".into()));
        // The image's entrypoint, with the image's binary path pointing at the tested binary.
        let mut argv = t.image.entrypoint.clone();
        assert_eq!(argv[0], "/usr/local/bin/medpool");
        argv[0] = bin.display().to_string();
        Pod {
            ordinal,
            name,
            ip,
            dir,
            env,
            argv,
            proc: None,
            starts: 0,
        }
    }

    fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join(format!("medpool.{}.log", self.starts))
    }

    /// Starts the container (the image's entrypoint), then its postStart hook, as the kubelet does;
    /// returns the hook's output when it has finished (a container is running only then).
    fn start(&mut self, t: &PodTemplate) -> String {
        self.spawn(t);
        self.post_start(t)
    }

    /// The container's process.
    fn spawn(&mut self, t: &PodTemplate) {
        self.starts += 1;
        let tmp = self.dir.join("vol-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let log = std::fs::File::create(self.log_file()).unwrap();
        let child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.proc = Some(Proc::new(child, &self.name, t.termination_grace));
    }

    /// The postStart hook (the kubelet runs it right after the container starts).
    fn post_start(&self, t: &PodTemplate) -> String {
        match &t.post_start {
            Some(cmd) => {
                let (ok, out) = self.hook(cmd, t.termination_grace);
                assert!(ok, "{}: postStart hook failed:\n{out}", self.name);
                out
            }
            None => String::new(),
        }
    }

    /// Runs a hook command in the container's environment (the kubelet's exec); (success, output).
    fn hook(&self, cmd: &[String], limit: Duration) -> (bool, String) {
        let script: Vec<String> = cmd
            .iter()
            .map(|a| a.replace("127.0.0.1:", &format!("{}:", self.ip)))
            .collect();
        let child = Command::new(&script[0])
            .args(&script[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut p = Proc::new(
            child,
            &format!("{} hook", self.name),
            Duration::from_secs(1),
        );
        let mut stdout = p.child.as_mut().unwrap().stdout.take().unwrap();
        let mut stderr = p.child.as_mut().unwrap().stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut a = String::new();
            let _ = stdout.read_to_string(&mut a);
            let mut b = String::new();
            let _ = stderr.read_to_string(&mut b);
            a + &b
        });
        let status = p.wait_timeout(limit);
        if status.is_none() {
            p.stop();
        }
        let out = reader.join().unwrap_or_default();
        (status.is_some_and(|s| s.success()), out)
    }

    /// The pod's own view of the pool (`medpool ctl -o json status` in the container's environment,
    /// as the hooks run it: the admin token comes from there).
    fn status(&self, bin: &Path) -> Option<PoolStatus> {
        let admin = self.env("MEDPOOL_ADMIN_LISTEN").unwrap();
        assert!(admin.starts_with(&self.ip), "{admin}");
        let o = Command::new(bin)
            .args([
                "ctl",
                "-o",
                "json",
                "--timeout",
                "3",
                "--server",
                admin,
                "status",
            ])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        PoolStatus::parse(&String::from_utf8_lossy(&o.stdout))
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("openraft::")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Every "shards released"/"shards adopted" line of every pod's logs, in time order: a call is
/// lost when the calls a release stopped are not all restored by the adoption.
fn shard_moves(pods: &[Pod]) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    for p in pods {
        for n in 1..=p.starts {
            let log =
                std::fs::read_to_string(p.dir.join(format!("medpool.{n}.log"))).unwrap_or_default();
            for l in log
                .lines()
                .filter(|l| l.contains("shards released") || l.contains("shards adopted"))
            {
                let at = l
                    .split("\"timestamp\":\"")
                    .nth(1)
                    .and_then(|t| t.get(11..23))
                    .unwrap_or("?")
                    .to_owned();
                let what = l
                    .split("\"fields\":")
                    .nth(1)
                    .and_then(|f| f.split('}').next())
                    .unwrap_or(l);
                lines.push((at, format!("{} (start {n}) {what}", p.name)));
            }
        }
    }
    lines.sort();
    lines
        .into_iter()
        .map(|(at, l)| format!("{at} {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `medpool ctl -o json status`, parsed.
#[derive(Debug, Clone)]
struct PoolStatus {
    leader: Option<u64>,
    unowned: u64,
    /// (node, state, shards)
    nodes: Vec<(u64, String, u64)>,
    text: String,
}

impl PoolStatus {
    fn parse(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let mut nodes = Vec::new();
        for n in v["nodes"].as_array()? {
            nodes.push((
                n["id"].as_u64()?,
                n["state"].as_str()?.to_owned(),
                n["shards"].as_u64()?,
            ));
        }
        Some(PoolStatus {
            leader: v["leader"].as_u64(),
            unowned: v["unowned_shards"].as_u64()?,
            nodes,
            text: text.to_owned(),
        })
    }
    fn state_of(&self, id: u64) -> Option<&str> {
        self.nodes.iter().find(|n| n.0 == id).map(|n| n.1.as_str())
    }
    fn shards_of(&self, id: u64) -> Option<u64> {
        self.nodes.iter().find(|n| n.0 == id).map(|n| n.2)
    }
    /// Every node active and owning shards again, every shard owned.
    fn ready(&self, nodes: usize) -> bool {
        self.leader.is_some()
            && self.unowned == 0
            && self.nodes.len() == nodes
            && self.nodes.iter().all(|n| n.1 == "active" && n.2 > 0)
    }
}

fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return Err(format!("not within {limit:?}: {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------------------------------------
// The SIP Service: a UDP forwarder to ready pods, pinned per client address (sessionAffinity ClientIP)

struct Service {
    ready: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    forwarded: Arc<Vec<AtomicU64>>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    fn start(addr: &str, pods: Vec<SocketAddr>) -> Self {
        let sock =
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("cannot bind the Service {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let ready = Arc::new(Mutex::new(vec![false; pods.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded: Arc<Vec<AtomicU64>> =
            Arc::new((0..pods.len()).map(|_| AtomicU64::new(0)).collect());
        let dropped = Arc::new(AtomicU64::new(0));
        let (r, st, fw, dr) = (
            ready.clone(),
            stop.clone(),
            forwarded.clone(),
            dropped.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut pins: HashMap<IpAddr, usize> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, src)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let ready = r.lock().unwrap().clone();
                let pinned = pins.get(&src.ip()).copied().filter(|i| ready[*i]);
                let target = pinned.or_else(|| {
                    // A new (or re-pinned) client goes to the ready pod with the fewest clients.
                    (0..ready.len())
                        .filter(|i| ready[*i])
                        .min_by_key(|i| (pins.values().filter(|p| *p == i).count(), *i))
                });
                let Some(i) = target else {
                    dr.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                pins.insert(src.ip(), i);
                let msg = &buf[..n];
                let Some(eol) = msg.windows(2).position(|w| w == b"\r\n") else {
                    continue;
                };
                let mut out = Vec::with_capacity(n + 48);
                out.extend_from_slice(&msg[..eol + 2]);
                out.extend_from_slice(format!("X-Medpool-Source: {src}\r\n").as_bytes());
                out.extend_from_slice(&msg[eol + 2..]);
                let _ = sock.send_to(&out, pods[i]);
                fw[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        Service {
            ready,
            stop,
            forwarded,
            dropped,
            thread: Some(thread),
        }
    }
    fn set_ready(&self, i: usize, ready: bool) {
        self.ready.lock().unwrap()[i] = ready;
    }
    fn counts(&self) -> Vec<u64> {
        self.forwarded
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// SIPp peers

fn require_sipp() {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "SIPp is not installed (Debian's sip-tester; scripts/test.sh installs it): the test cannot run"
    );
}

struct Sipp {
    proc: Proc,
    name: String,
    screen: PathBuf,
    errors: PathBuf,
    stdout: PathBuf,
}

impl Sipp {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Self {
        let f = |ext: &str| dir.join(format!("sipp-{name}.{ext}"));
        let (screen, errors, stdout) = (f("screen.log"), f("errors.log"), f("stdout.log"));
        let out = std::fs::File::create(&stdout).unwrap();
        let child = Command::new("sipp")
            .args(args)
            .args(["-nostdin", "-trace_err", "-error_file"])
            .arg(&errors)
            .args(["-trace_screen", "-screen_file"])
            .arg(&screen)
            .args(["-trace_msg", "-message_file"])
            .arg(dir.join(format!("sipp-{name}.messages.log")))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp: {e}"));
        Sipp {
            proc: Proc::new(child, &format!("sipp {name}"), Duration::from_secs(3)),
            name: name.to_owned(),
            screen,
            errors,
            stdout,
        }
    }
    /// Counters from SIPp's final screen: (successful, failed).
    fn calls(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(&self.screen).unwrap_or_default();
        let count = |label: &str| {
            text.lines()
                .filter(|l| l.trim_start().starts_with(label))
                .filter_map(|l| {
                    l.split('|')
                        .nth(2)
                        .and_then(|c| c.trim().parse::<u64>().ok())
                })
                .next_back()
                .unwrap_or(0)
        };
        (count("Successful call"), count("Failed call"))
    }
    /// Messages SIPp did not expect where they came: (first line, CSeq line) of each.
    fn unexpected(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.errors).unwrap_or_default();
        let mut out = Vec::new();
        for entry in text
            .split("\n'")
            .filter(|e| e.contains("unexpected message"))
        {
            let Some((_, msg)) = entry.split_once("received '") else {
                continue;
            };
            let first = msg.lines().next().unwrap_or("").trim().to_owned();
            let cseq = msg
                .lines()
                .find(|l| l.starts_with("CSeq:"))
                .unwrap_or("")
                .trim()
                .to_owned();
            out.push((first, cseq));
        }
        out
    }

    fn report(&self) -> String {
        let errs = std::fs::read_to_string(&self.errors).unwrap_or_default();
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let tail = |t: &str, n: usize| {
            let l: Vec<&str> = t.lines().collect();
            l[l.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "--- sipp {} errors (last 30 lines) ---\n{}\n--- sipp {} output ---\n{}",
            self.name,
            tail(&errs, 30),
            self.name,
            tail(&out, 15)
        )
    }
}

// ------------------------------------------------------------------------------------------------

#[test]
fn startup_contract_rolling_restart_under_load() {
    let _one = serial();
    let started = Instant::now();
    require_sipp();
    let tools = tools();
    let bin = medpool_chaos_tests::binary::medpool_binary()
        .unwrap_or_else(|e| panic!("no medpool binary: {e}"));
    let scratch = Scratch::new("startup-contract");
    let root = scratch.path();

    // Render the chart with the test's values: its pool configuration seed (trunks on 127.0.90.x)
    // and the Service stand-in as trusted SIP forwarder; the internal port without TLS (this
    // stand-in for the kubelet does not fill the projected volume of per-node certificates, and its
    // pods listen on loopback, where a node allows that). Everything else is the chart's default.
    let values = format!(
        "internalTls:\n  enabled: false\nsip:\n  trustedForwarders:\n    - \"{SERVICE_IP}\"\nconfig:\n  seed: |\n{}",
        seed_config()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let values_file = root.join("values.yaml");
    std::fs::write(&values_file, &values).unwrap();
    let objects = render(&tools, &values_file, &root.join("rendered.yaml"));
    let t = PodTemplate::from_render(objects);
    let replicas = find(&t.objects, "StatefulSet", "medpool")["spec"]["replicas"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(replicas, PODS, "the chart's default is 3 replicas");

    // Cluster DNS stand-in: the headless Service's pod names and the SIP Service's name.
    let peers = format!("medpool-peers.{NAMESPACE}.svc.cluster.local");
    let mut hosts = String::from("# cluster DNS for the start-up contract test\n");
    for i in 0..PODS {
        writeln!(hosts, "{} medpool-{i}.{peers}", pod_ip(i)).unwrap();
    }
    writeln!(
        hosts,
        "{SERVICE_IP} medpool-sip.{NAMESPACE}.svc.cluster.local"
    )
    .unwrap();
    let hosts_file = root.join("hosts");
    std::fs::write(&hosts_file, hosts).unwrap();

    let mut pods: Vec<Pod> = (0..PODS)
        .map(|i| Pod::new(&t, i, root, &bin, &hosts_file))
        .collect();
    for p in &pods {
        assert_eq!(
            p.env("HOSTNAME"),
            Some(p.name.as_str()),
            "HOSTNAME is the pod name"
        );
        assert_eq!(
            p.env("MEDPOOL_RAFT_ADVERTISE"),
            Some(format!("{}.{peers}:7000", p.name).as_str())
        );
    }
    eprintln!(
        "== pod medpool-0 runs: {} with\n   {}",
        pods[0].argv.join(" "),
        pods[0]
            .env
            .iter()
            .filter(|(k, _)| k != "MEDPOOL_ADMIN_TOKEN")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n   ")
    );

    let service = Service::start(
        &format!("{SERVICE_IP}:5060"),
        (0..PODS)
            .map(|i| format!("{}:5060", pod_ip(i)).parse().unwrap())
            .collect(),
    );

    let fail = |pods: &[Pod], msg: String| -> ! {
        for p in pods {
            eprintln!(
                "--- {} (last 40 lines but openraft's) ---\n{}",
                p.name,
                p.log_tail(40)
            );
        }
        if let Some(st) = pods.iter().find_map(|p| p.status(&bin)) {
            eprintln!("--- pool status ---\n{}", st.text);
        }
        eprintln!(
            "--- shard moves (calls stopped by the releasing node, restored by the adopting one) ---"
        );
        eprintln!("{}", shard_moves(pods));
        panic!("{msg}");
    };

    // podManagementPolicy Parallel: all pods start at once.
    for p in &mut pods {
        p.spawn(&t);
    }
    let post: Vec<String> = std::thread::scope(|sc| {
        let hooks: Vec<_> = pods.iter().map(|p| sc.spawn(|| p.post_start(&t))).collect();
        hooks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, out) in pods.iter().zip(&post) {
        eprintln!(
            "   {} postStart: {}",
            p.name,
            out.trim().replace('\n', " | ")
        );
    }
    if t.post_start.is_some() && post.iter().any(|o| o.contains("could not be made active")) {
        fail(
            &pods,
            format!(
                "a postStart hook could not make its node active: the pool did not form from the chart's \
                 start-up contract. Nodes 1 and 2 join medpool-0.{peers}:7000, which only the hosts file \
                 (MEDPOOL_HOSTS_FILE) resolves here"
            ),
        );
    }
    let formed = wait_for(
        Duration::from_secs(40),
        "a 3-node pool with every shard owned",
        || pods[0].status(&bin).filter(|s| s.ready(PODS)),
    );
    let formed = match formed {
        Ok(s) => s,
        Err(e) => fail(
            &pods,
            format!(
                "the pool did not form from the chart's start-up contract: {e}. Nodes 1 and 2 join \
                 medpool-0.{peers}:7000, which only the hosts file (MEDPOOL_HOSTS_FILE) resolves"
            ),
        ),
    };
    eprintln!(
        "== pool formed in {:.1} s\n{}",
        started.elapsed().as_secs_f64(),
        formed.text
    );
    // Node ids are the ordinals.
    for p in &pods {
        let log = std::fs::read_to_string(p.log_file()).unwrap_or_default();
        assert!(
            log.contains(&format!(" node={} ", p.ordinal)),
            "{} must be node {} (its ordinal); its ready line: {:?}",
            p.name,
            p.ordinal,
            log.lines().find(|l| l.starts_with("medpool ready"))
        );
    }
    for (i, p) in pods.iter().enumerate() {
        service.set_ready(
            i,
            p.status(&bin)
                .is_some_and(|s| s.state_of(i as u64) == Some("active")),
        );
    }

    // Gateways answer everything (-aa: OPTIONS probes too); two PBXs place calls held 12 s through
    // the Service during the whole rolling restart.
    require_sipp();
    let _gws: Vec<Sipp> = GATEWAYS
        .iter()
        .enumerate()
        .map(|(k, ip)| {
            Sipp::spawn(
                root,
                &format!("gw{}", k + 1),
                &["-sn", "uas", "-i", ip, "-p", "5060", "-aa"].map(str::to_owned),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    const CALLS: u64 = 36;
    let mut pbxs: Vec<Sipp> = PBXS
        .iter()
        .enumerate()
        .map(|(k, ip)| {
            let args: Vec<String> = [
                &format!("{SERVICE_IP}:5060"),
                "-sn",
                "uac",
                "-i",
                ip,
                "-p",
                "5070",
                "-m",
                &CALLS.to_string(),
                "-r",
                "1",
                "-d",
                "12000",
                "-recv_timeout",
                "30000",
                "-timeout",
                "140s",
                "-timeout_error",
                // An unexpected message does not abort the call (SIPp's default would): a UAC
                // ignores a provisional response that arrives after the 200 OK (RFC 3261 §17.1.1,
                // the transaction is over); the test counts them and fails on anything else.
                "-default_behaviors",
                "bye,pingreply",
            ]
            .map(str::to_owned)
            .to_vec();
            Sipp::spawn(root, &format!("pbx{}", k + 1), &args)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));

    // The rolling restart: highest ordinal first; each pod leaves the Service, is drained by its
    // preStop hook, gets SIGTERM, comes back on the same claim, and must be ready (and the pool
    // whole again) before the controller moves on (after minReadySeconds).
    let mut table = String::from("pod        preStop  stop    ready   pool-ready  shards-after\n");
    for i in (0..PODS).rev() {
        let step = Instant::now();
        let name = pods[i].name.clone();
        eprintln!("== rolling restart: {name}");
        service.set_ready(i, false);
        let (ok, out) = pods[i].hook(&t.pre_stop, t.termination_grace);
        let pre = step.elapsed();
        eprintln!(
            "   preStop ({:.1} s): {}",
            pre.as_secs_f64(),
            out.trim().replace('\n', " | ")
        );
        if !ok || !out.contains("drained (no shard left)") {
            fail(
                &pods,
                format!("{name}: the preStop drain did not finish: {out}"),
            );
        }
        let seen = pods[(i + 1) % PODS].status(&bin);
        assert_eq!(
            seen.as_ref().and_then(|s| s.shards_of(i as u64)),
            Some(0),
            "{name} owns no shard after its preStop: {seen:?}"
        );
        let left = t.termination_grace.saturating_sub(pre);
        let proc = pods[i].proc.as_mut().unwrap();
        proc.grace = left;
        let pid = proc.pid();
        let (status, killed) = proc.stop().expect("the pod was running");
        let stopped = step.elapsed();
        assert!(
            !killed,
            "{name} (pid {pid}) did not exit within terminationGracePeriodSeconds after SIGTERM"
        );
        assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM"
        );
        eprintln!(
            "   SIGTERM: exited ({status}) after {:.1} s",
            (stopped - pre).as_secs_f64()
        );
        let post = pods[i].start(&t);
        eprintln!(
            "   started again; postStart: {}",
            post.trim().replace('\n', " | ")
        );
        let me = i as u64;
        if let Err(e) = wait_for(
            Duration::from_secs(30),
            "the pod ready (leader known, itself Active)",
            || {
                pods[i]
                    .status(&bin)
                    .filter(|s| s.leader.is_some() && s.state_of(me) == Some("active"))
            },
        ) {
            fail(&pods, format!("{name} after its restart: {e}"));
        }
        let ready = step.elapsed();
        service.set_ready(i, true);
        let whole = match wait_for(
            Duration::from_secs(30),
            "every node Active, every shard owned",
            || pods[(i + 1) % PODS].status(&bin).filter(|s| s.ready(PODS)),
        ) {
            Ok(s) => s,
            Err(e) => fail(&pods, format!("the pool after restarting {name}: {e}")),
        };
        let pool_ready = step.elapsed();
        writeln!(
            table,
            "{name:<10} {:>6.1}s {:>6.1}s {:>6.1}s {:>9.1}s  {:?}",
            pre.as_secs_f64(),
            stopped.as_secs_f64(),
            ready.as_secs_f64(),
            pool_ready.as_secs_f64(),
            whole.nodes.iter().map(|n| n.2).collect::<Vec<_>>()
        )
        .unwrap();
        std::thread::sleep(t.min_ready);
    }
    eprintln!("== rolling restart done\n{table}");

    // Every call placed through the Service during the restart must have succeeded.
    let mut problems = Vec::new();
    for pbx in &mut pbxs {
        let status = pbx.proc.wait_timeout(Duration::from_secs(90));
        let (ok, failed) = pbx.calls();
        eprintln!(
            "== sipp {}: exit {status:?}, {ok} successful, {failed} failed of {CALLS}",
            pbx.name
        );
        let unexpected = pbx.unexpected();
        let (late, other): (Vec<_>, Vec<_>) = unexpected
            .iter()
            .partition(|(first, cseq)| first.starts_with("SIP/2.0 1") && cseq.ends_with(" INVITE"));
        if !late.is_empty() {
            eprintln!(
                "   NOTE: {} provisional responses to INVITE arrived after the call's 200 OK \
                 (medpool sent them out of order); ignored, as a UAC does: {:?}",
                late.len(),
                late.iter().map(|l| l.0.as_str()).collect::<Vec<_>>()
            );
        }
        if status.is_none_or(|s| !s.success()) || ok != CALLS || failed != 0 || !other.is_empty() {
            problems.push(format!("unexpected messages: {other:?}\n{}", pbx.report()));
        }
    }
    eprintln!(
        "== Service forwarded {:?} datagrams to pods 0..2, dropped {} (no ready pod)",
        service.counts(),
        service.dropped.load(Ordering::Relaxed)
    );
    if !problems.is_empty() {
        fail(
            &pods,
            format!(
                "calls failed during the rolling restart:\n{}",
                problems.join("\n")
            ),
        );
    }
    // The drains moved calls in progress: the adopting nodes rebuilt them from their records.
    let restored: u64 = pods
        .iter()
        .flat_map(|p| (1..=p.starts).map(move |n| p.dir.join(format!("medpool.{n}.log"))))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("shards adopted"))
                .filter_map(|l| {
                    let n = l.split("\"restored\":").nth(1)?;
                    n.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum();
    assert!(
        restored > 0,
        "no call was in progress on a drained node: the test did not test what it claims"
    );
    let total = started.elapsed();
    eprintln!(
        "== start-up contract: {} calls through 3 restarts ({restored} calls moved by the drains), none lost; {:.0} s",
        2 * CALLS,
        total.as_secs_f64()
    );
    // Stop everything at once (each guard would wait for its own process in turn).
    for p in &pods {
        if let Some(proc) = &p.proc {
            proc.signal("TERM");
        }
    }
}
