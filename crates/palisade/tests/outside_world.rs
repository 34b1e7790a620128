//! The outside world in `palisade analyze`: ranges cut by the policies'
//! ipBlocks are rows and columns in every format; `--from`/`--to` take an
//! address; and output stays bounded and grouped on a large cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{port: 443}]
"#;

/// A manifest file in a directory of its own, removed when dropped.
struct Written(PathBuf);

impl std::ops::Deref for Written {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write(name: &str, text: &str) -> Written {
    let dir = std::env::temp_dir().join(format!("palisade-outside-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, text).unwrap();
    Written(file)
}

fn run(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade")).args(args).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_outside_world_is_in_every_format() {
    let file = write("formats", CLUSTER);
    let f = file.to_str().unwrap();
    let table = run(&["analyze", f]);
    // 192.0.2.0/24 is in both policies' blocks: a range of its own.
    let internet = "(0.0.0.0/0 except 10.0.0.0/8,192.0.2.0/24)";
    assert!(
        table.lines().any(|l| l.starts_with(internet) && l.contains("shop/web") && l.ends_with("TCP 8080")),
        "the internet reaches web on its named port:\n{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("shop/api") && l.contains("(192.0.2.0/24)") && l.ends_with("TCP 443")),
        "api reaches its one outside range:\n{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["analyze", f, "-o", "json"])).unwrap();
    let names: Vec<&str> = json["external"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&internet) && names.contains(&"(192.0.2.0/24)"), "{names:?}");
    assert!(json["connections"].as_array().unwrap().iter().any(|r| r["sources"][0] == internet));
    for format in ["tsv", "jsonl", "dot", "html"] {
        let out = run(&["analyze", f, "-o", format]);
        assert!(out.contains(internet), "-o {format}:\n{out}");
    }
    assert!(run(&["analyze", f, "-o", "dot"]).contains("outside the cluster"));
}

#[test]
fn an_address_is_a_flow_end_in_port_mode() {
    let file = write("address", CLUSTER);
    let f = file.to_str().unwrap();
    let verdict = |from: &str, to: &str, port: &str| {
        let out = run(&["analyze", f, "--port", port, "-o", "tsv", "--from", from, "--to", to]);
        let rows: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(rows.len(), 1, "{out}");
        let fields: Vec<&str> = rows[0].split('\t').collect();
        assert_eq!((fields[0], fields[1]), (from, to), "the address is shown as itself");
        fields[4].to_string()
    };
    assert_eq!(verdict("203.0.113.7", "shop/web", "tcp/8080"), "allow");
    assert_eq!(verdict("10.1.2.3", "shop/web", "tcp/8080"), "deny");
    assert_eq!(verdict("2001:db8::1", "shop/web", "tcp/8080"), "deny");
    assert_eq!(verdict("shop/api", "192.0.2.9", "tcp/443"), "allow");
    assert_eq!(verdict("shop/api", "198.51.100.1", "tcp/443"), "deny");
    // A CIDR picks the ranges it overlaps.
    let internet = "(0.0.0.0/0 except 10.0.0.0/8,192.0.2.0/24)";
    let out = run(&["analyze", f, "-o", "tsv", "--pairs", "--from", "192.0.2.0/28", "--to", "shop/*"]);
    assert!(
        out.lines().skip(1).all(|l| l.starts_with(&format!("{internet}\t")) || l.starts_with("(192.0.2.0/24)\t")),
        "{out}"
    );
}

/// 2,000 pods: every grouped format has the table's rows; no table line is
/// wider than its wrapped cells allow; `--pairs` has one line per pair.
#[test]
fn large_clusters_stay_grouped_and_bounded() {
    let gen = run(&["bench", "gen", "--namespaces", "20", "--pods", "2000", "--policies", "1000", "--seed", "7"]);
    let file = write("large", &gen);
    let f = file.to_str().unwrap();
    let tsv = run(&["analyze", f, "-o", "tsv"]);
    let rows = tsv.lines().count() - 1;
    let jsonl = run(&["analyze", f, "-o", "jsonl"]);
    assert_eq!(jsonl.lines().count(), rows);
    let json: serde_json::Value = serde_json::from_str(&run(&["analyze", f, "-o", "json"])).unwrap();
    assert_eq!(json["connections"].as_array().unwrap().len(), rows);
    assert_eq!(json["endpoints"].as_array().unwrap().len(), 2000);
    let table = run(&["analyze", f]);
    let widest = table.lines().map(|l| l.chars().count()).max().unwrap();
    // Two wrapped cells (72 each, or one long item), their gaps and the connections.
    let longest_connections = tsv.lines().skip(1).map(|l| l.rsplit('\t').next().unwrap().len()).max().unwrap();
    assert!(widest <= 72 + 2 + 72 + 2 + longest_connections + 40, "a {widest}-character line");
    assert!(table.contains("more (-o json lists all)"), "long cells are counted, not listed");
    let pairs = run(&["analyze", f, "-o", "jsonl", "--pairs"]);
    let pairs_tsv = run(&["analyze", f, "-o", "tsv", "--pairs"]);
    assert_eq!(pairs.lines().count(), pairs_tsv.lines().count() - 1);
    // The grouped rows, expanded, are exactly the pairs: `*` is every
    // endpoint, `ns/*` a namespace's, `(anywhere outside)` every outside
    // range; a pod with itself is no pair, a workload with itself is (its
    // replicas).
    let names: Vec<String> =
        json["endpoints"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    let outside: Vec<String> =
        json["external"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect();
    let expand = |items: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        for i in items.as_array().unwrap().iter().map(|i| i.as_str().unwrap()) {
            if i == "*" {
                out.extend(names.iter().cloned());
            } else if i == "(anywhere outside)" {
                out.extend(outside.iter().cloned());
            } else if let Some(ns) = i.strip_suffix("/*") {
                out.extend(names.iter().filter(|n| n.starts_with(&format!("{ns}/"))).cloned());
            } else {
                out.push(i.to_string());
            }
        }
        out
    };
    let mut grouped = std::collections::BTreeMap::new();
    for r in json["connections"].as_array().unwrap() {
        for s in expand(&r["sources"]) {
            for d in expand(&r["destinations"]) {
                if s == d && !s.contains('[') {
                    continue;
                }
                let previous = grouped.insert((s.clone(), d.clone()), r["connections"].as_str().unwrap().to_string());
                assert!(previous.is_none(), "{s} -> {d} is in two rows");
            }
        }
    }
    let mut listed = std::collections::BTreeMap::new();
    for line in pairs.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (p["src"].as_str().unwrap().to_string(), p["dst"].as_str().unwrap().to_string());
        listed.insert(key, p["connections"].as_str().unwrap().to_string());
    }
    assert_eq!(grouped.len(), listed.len());
    assert!(grouped == listed, "grouped rows and pairs describe the same connections");
}

/// `palisade diff A B -o json`, and its (source, destination, gained) rows.
fn gained(a: &Path, b: &Path) -> (String, Vec<(String, String, String)>) {
    let out = run(&["diff", a.to_str().unwrap(), b.to_str().unwrap(), "-o", "json"]);
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let field = |c: &serde_json::Value, k: &str| c[k].as_str().unwrap().to_string();
    let rows = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (field(c, "source"), field(c, "destination"), field(c, "gained")))
        .collect();
    (out, rows)
}

/// `diff` cuts both sides by the union of their ipBlocks: a policy that
/// widens 10.0.0.0/8 to 0.0.0.0/0 gains exactly the rest of IPv4.
#[test]
fn diff_shows_what_the_outside_world_gains() {
    let before = CLUSTER.replace("except: [10.0.0.0/8]", "except: [10.0.0.0/8, 100.64.0.0/10]");
    let (a, b) = (write("diff-a", &before), write("diff-b", CLUSTER));
    let (out, rows) = gained(&a, &b);
    assert_eq!(rows, [("(100.64.0.0/10)".into(), "shop/web".into(), "TCP 8080".into())], "{out}");
}

/// `diff` assembles both states with what either one's policies see: a
/// new policy that reads a label the replicas differ in changes the one
/// pair it opens, and does not rename the workload. A workload with itself
/// (its replicas) is a pair too.
#[test]
fn diff_of_a_policy_change_does_not_rename_endpoints() {
    let pods = |track_b: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: shop, labels: {{app: client}}}}\nstatus: {{podIP: 10.0.0.9}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: web-a, namespace: shop, labels: {{app: web, track: stable}}, ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d, uid: u, controller: true}}]}}\nstatus: {{podIP: 10.0.0.2}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: web-b, namespace: shop, labels: {{app: web, track: {track_b}}}, ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d, uid: u, controller: true}}]}}\nstatus: {{podIP: 10.0.0.3}}\n"
        )
    };
    let deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]}\n";
    let canary = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: canary, namespace: shop}\nspec: {podSelector: {matchLabels: {track: canary}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 9090}]}]}\n";
    let a = write("rename-a", &(pods("canary") + deny));
    let b = write("rename-b", &(pods("canary") + deny + canary));
    let (out, rows) = gained(&a, &b);
    assert_eq!(
        rows,
        [("shop/client".into(), "shop/web-7d[ReplicaSet:track=canary]".into(), "TCP 9090".into())],
        "{out}"
    );
    // Before any policy, the replicas reach each other; isolating them loses that.
    let open = write("rename-c", &pods("stable"));
    let closed = write("rename-d", &(pods("stable") + deny));
    let out = run(&["diff", open.to_str().unwrap(), closed.to_str().unwrap(), "-o", "json"]);
    let changes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        changes.as_array().unwrap().iter().any(|c| c["source"] == "shop/web-7d[ReplicaSet]"
            && c["destination"] == "shop/web-7d[ReplicaSet]"
            && c["lost"] == "all"),
        "{out}"
    );
}
