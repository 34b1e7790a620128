//! Scenario files: loading, the upstream x/y/z model, expectations, and
//! running the real `palisade` binary on them. Shared by the conformance
//! tests (and later the lab's real-packet runs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

#[derive(Debug, Deserialize, Clone)]
pub struct Rule {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub port: Option<String>,
    pub verdict: String,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Expect {
    pub default: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn pattern_matches(pattern: &str, endpoint: &str) -> bool {
    if pattern == "*" || pattern == endpoint {
        return true;
    }
    let (pns, pname) = pattern.split_once('/').unwrap_or(("default", pattern));
    let (ens, ename) = endpoint.split_once('/').unwrap_or(("default", endpoint));
    (pns == "*" || pns == ens) && (pname == "*" || pname == ename)
}

impl Expect {
    pub fn verdict(&self, src: &str, dst: &str, probe: &str) -> String {
        if src == dst {
            return "allow".into();
        }
        let mut v = self.default.clone();
        for r in &self.rules {
            if pattern_matches(&r.from, src)
                && pattern_matches(&r.to, dst)
                && r.port.as_deref().is_none_or(|p| p == probe)
            {
                v = r.verdict.clone();
            }
        }
        v
    }
}

#[derive(Debug, Deserialize, Clone)]
pub struct Step {
    #[serde(default)]
    pub manifests: Option<String>,
    #[serde(default)]
    pub delete: Vec<String>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub ports: Vec<String>,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub manifests: Option<String>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Why the scenario's expectations do not hold in the lab (where every
    /// pod has an address): there, only kernel == engine is checked.
    #[serde(default)]
    pub lab_note: Option<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// A step with its whole cluster: what to analyze and what to expect.
pub struct Materialized {
    pub manifests: Vec<Value>,
    pub expect: Expect,
}

fn object_key(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("");
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or(if kind == "Namespace" || kind == "Node" {
        ""
    } else {
        "default"
    });
    let name = doc["metadata"]["name"].as_str().unwrap_or("");
    format!("{kind}/{ns}/{name}")
}

fn parse_docs(text: &str) -> Result<Vec<Value>, String> {
    // YAML 1.2 booleans only: namespace `y` must stay the string "y".
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .map(|d| d.into_iter().filter(|v| !v.is_null()).collect())
        .map_err(|e| e.to_string())
}

impl Scenario {
    pub fn materialize(&self) -> Result<Vec<Materialized>, String> {
        let mut objects: BTreeMap<String, Value> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let put = |objects: &mut BTreeMap<String, Value>, order: &mut Vec<String>, doc: Value| {
            let key = object_key(&doc);
            if !objects.contains_key(&key) {
                order.push(key.clone());
            }
            objects.insert(key, doc);
        };
        match self.base.as_deref() {
            None => {}
            Some("xyz") => {
                for doc in xyz_model(self.ipv6) {
                    put(&mut objects, &mut order, doc);
                }
            }
            Some(other) => return Err(format!("unknown base {other:?}")),
        }
        let steps: Vec<Step> = if self.steps.is_empty() {
            vec![Step {
                manifests: self.manifests.clone(),
                delete: vec![],
                expect: self.expect.clone().ok_or("no expect and no steps")?,
            }]
        } else {
            self.steps.clone()
        };
        let mut out = Vec::new();
        for step in steps {
            for d in &step.delete {
                let parts: Vec<&str> = d.splitn(3, '/').collect();
                let key = match parts.as_slice() {
                    [kind, ns, name] => format!("{kind}/{ns}/{name}"),
                    [kind, name] => format!("{kind}//{name}"),
                    _ => return Err(format!("bad delete {d:?}")),
                };
                if objects.remove(&key).is_none() {
                    return Err(format!("delete {d:?}: no such object"));
                }
            }
            if let Some(m) = &step.manifests {
                for doc in parse_docs(m)? {
                    put(&mut objects, &mut order, doc);
                }
            }
            let manifests = order.iter().filter_map(|k| objects.get(k).cloned()).collect();
            out.push(Materialized { manifests, expect: step.expect });
        }
        Ok(out)
    }
}

/// The upstream e2e model: namespaces x, y, z; pods a, b, c serving 80 and
/// 81 on TCP, UDP and SCTP with upstream's port names.
pub fn xyz_model(ipv6: bool) -> Vec<Value> {
    let mut docs = Vec::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"ns": ns, "kubernetes.io/metadata.name": ns}}}));
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            let mut containers = Vec::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    let lower = proto.to_lowercase();
                    containers.push(json!({"name": format!("cont-{port}-{lower}"), "image": "agnhost",
                        "ports": [{"name": format!("serve-{port}-{lower}"), "containerPort": port, "protocol": proto}]}));
                }
            }
            let v4 = format!("10.244.{}.{}", i + 1, 10 + j);
            let mut ips = vec![json!({"ip": v4})];
            if ipv6 {
                ips.push(json!({"ip": format!("fd00:10:244:{}::{}", i + 1, 10 + j)}));
            }
            docs.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                "spec": {"nodeName": "node-1", "containers": containers},
                "status": {"podIP": v4, "podIPs": ips}}));
        }
    }
    docs
}

pub fn load_dir(dir: &str) -> Vec<Scenario> {
    let path = conformance_dir().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut s: Scenario = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert_eq!(
                Some(s.name.as_str()),
                f.file_stem().and_then(|s| s.to_str()),
                "{}: name must equal the file name",
                f.display()
            );
            s.path = f;
            s
        })
        .collect()
}

pub struct Row {
    pub src: String,
    pub dst: String,
    pub probe: String,
    pub verdict: String,
}

/// Writes the cluster to a temporary file and runs the real binary.
pub fn run_analyze(manifests: &[Value], ports: &[String], extra: &[&str]) -> Result<Vec<Row>, String> {
    let dir = std::env::temp_dir().join(format!("palisade-conformance-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("cluster.yaml");
    let text: String = manifests.iter().map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap())).collect();
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.arg("analyze").arg(&file).args(["-o", "tsv"]).args(extra);
    for p in ports {
        cmd.args(["--port", p]);
    }
    // The scenarios' expectations are between the cluster's endpoints:
    // leave the outside world's ranges out.
    let mut namespaces: Vec<&str> =
        manifests.iter().filter_map(|m| m.pointer("/metadata/namespace").and_then(Value::as_str)).collect();
    namespaces.push("default");
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        cmd.args(["--from", &format!("{ns}/*"), "--to", &format!("{ns}/*")]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!("palisade analyze failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let stdout = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let mut lines = stdout.lines();
    if lines.next() != Some("src\tdst\tprotocol\tport\tverdict") {
        return Err(format!("unexpected header in:\n{stdout}"));
    }
    lines
        // A workload with itself (traffic between its replicas) is not a
        // pair the scenarios describe.
        .filter(|l| l.split('\t').next() != l.split('\t').nth(1))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 5 {
                return Err(format!("bad row {l:?}"));
            }
            Ok(Row { src: f[0].into(), dst: f[1].into(), probe: format!("{}/{}", f[2], f[3]), verdict: f[4].into() })
        })
        .collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A lab probe row: what the kernel did and what the engine said.
pub struct LabRow {
    pub src: String,
    pub dst: String,
    pub probe: String,
    pub verdict: String,
    pub engine: String,
}

/// Runs `palisade lab run` on the cluster (pods spread over two nodes: the
/// scenario's nodeName is dropped so traffic also crosses nodes). Returns
/// the rows and whether the binary reported agreement (exit 0).
pub fn run_lab(manifests: &[Value], ports: &[String], extra: &[&str]) -> Result<(Vec<LabRow>, bool, String), String> {
    let dir = std::env::temp_dir().join(format!("palisade-lab-conformance-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("cluster.yaml");
    let text: String = manifests
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("nodeName");
            }
            format!("---\n{}\n", serde_json::to_string(&d).unwrap())
        })
        .collect();
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(["lab", "run", "-f"]).arg(&file).args(["-o", "tsv"]).args(extra);
    for p in ports {
        cmd.args(["--port", p]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) | Some(1) => {}
        _ => return Err(format!("palisade lab run failed: {stderr}")),
    }
    let stdout = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;
    let mut lines = stdout.lines();
    if lines.next() != Some("src\tdst\tprotocol\tport\tverdict\tengine") {
        return Err(format!("unexpected header in:\n{stdout}\n{stderr}"));
    }
    let rows = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 6 {
                return Err(format!("bad row {l:?}"));
            }
            Ok(LabRow {
                src: f[0].into(),
                dst: f[1].into(),
                probe: format!("{}/{}", f[2], f[3]),
                verdict: f[4].into(),
                engine: f[5].into(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((rows, out.status.success(), stderr))
}

/// Root is needed for network namespaces. Skips loudly otherwise, and fails
/// instead when CI=true or PALISADE_REQUIRE_PRIVILEGED=1.
#[allow(unused_imports)]
pub use palisade_testkit::privileged;
