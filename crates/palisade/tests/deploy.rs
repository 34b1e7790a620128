//! deploy/: the manifests validate against the Kubernetes API schemas
//! (kubernetes-validate, strict: unknown fields fail), and they agree with
//! the code: the agent's arguments parse, the conflist is a config the
//! plugin reads, the RBAC only reads, the agent asks only for NET_ADMIN.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every object of every deploy manifest, as JSON.
fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in text.split("\n---") {
            if doc.trim().is_empty() {
                continue;
            }
            let v: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            out.push(v);
        }
    }
    out
}

fn validator() -> Option<String> {
    if let Ok(v) = std::env::var("PALISADE_KUBERNETES_VALIDATE") {
        return Some(v);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/schema-venv/bin/kubernetes-validate");
    if local.exists() {
        return Some(local.to_string_lossy().into_owned());
    }
    let required =
        std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var("PALISADE_REQUIRE_PRIVILEGED").is_ok();
    assert!(!required, "kubernetes-validate is missing: run scripts/ensure-schema-validator.sh (CI must validate)");
    eprintln!("SKIPPED: deploy manifests not schema-validated: run scripts/ensure-schema-validator.sh");
    None
}

fn validate(validator: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator).args(["--strict", "-k", "1.34.0"]).args(files).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some(validator) = validator() else { return };
    let files = manifests();
    let (ok, text) = validate(&validator, &files);
    assert!(ok, "{text}");
    assert_eq!(text.matches("passed").count(), objects().len(), "every object was checked:\n{text}");
    // The validator is strict: an unknown field and a wrong type fail.
    let bad = std::env::temp_dir().join(format!("palisade-deploy-bad-{}.yaml", std::process::id()));
    let daemonset = std::fs::read_to_string(deploy_dir().join("30-daemonset.yaml")).unwrap();
    for broken in [
        daemonset.replace("hostNetwork: true", "hostNetwork: \"yes\""),
        daemonset.replace("terminationGracePeriodSeconds: 10", "terminationGracePeriodSecond: 10"),
    ] {
        std::fs::write(&bad, broken).unwrap();
        let (ok, text) = validate(&validator, std::slice::from_ref(&bad));
        assert!(!ok, "a broken DaemonSet passed:\n{text}");
    }
    let _ = std::fs::remove_file(bad);
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn manifests_agree_with_the_code() {
    let objects = objects();
    let ds = find(&objects, "DaemonSet")[0];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    let mut argv = vec!["palisade".to_string()];
    argv.extend(agent["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()));
    let cli = palisade::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let palisade::cli::Command::Agent(args) = cli.command else { panic!("not the agent: {argv:?}") };
    assert!(args.kube, "the DaemonSet watches the API server");
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["add"], serde_json::json!(palisade_agent::CAPABILITIES), "what the agent needs and nothing more");
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    assert_eq!(agent["securityContext"]["privileged"], false);
    let env: Vec<&str> = agent["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    for var in ["NODE_NAME", "PALISADE_DENY", "PALISADE_KEEP_ESTABLISHED"] {
        assert!(env.contains(&var), "{var} is set");
    }
    // The node's sysctls are reached through a mount of the node's own.
    let mounts = agent["volumeMounts"].as_array().unwrap();
    let sysctl = mounts.iter().find(|m| args.sysctl_dir.join("net").to_str() == m["mountPath"].as_str());
    let sysctl = sysctl.unwrap_or_else(|| panic!("--sysctl-dir {:?} is not a mount of the node's", args.sysctl_dir));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == sysctl["name"]).unwrap();
    assert_eq!(volume["hostPath"]["path"], "/proc/sys/net");
    let probe_port = agent["livenessProbe"]["httpGet"]["port"].as_u64().unwrap();
    assert_eq!(args.metrics_addr.port() as u64, probe_port, "the probes hit the metrics server");

    // The conflist: palisade-cni first (its config as the plugin reads it),
    // no ranges (the Node's pod CIDRs), the socket the agent listens on.
    let config = find(&objects, "ConfigMap")[0];
    let conflist: Value = serde_json::from_str(config["data"]["10-palisade.conflist"].as_str().unwrap()).unwrap();
    let first = &conflist["plugins"][0];
    assert_eq!(first["type"], "palisade-cni");
    let mut netconf = first.clone();
    netconf["name"] = conflist["name"].clone();
    netconf["cniVersion"] = conflist["cniVersion"].clone();
    serde_json::from_value::<palisade_cni::plugin::NetConf>(netconf).expect("the plugin reads its conflist entry");
    assert!(first["ipam"].get("ranges").is_none());
    assert_eq!(first["agentSocket"].as_str().unwrap(), args.socket.to_str().unwrap());
    for key in ["deny", "keep-established"] {
        assert!(config["data"][key].is_string(), "{key} is configurable");
    }

    // RBAC: read-only, and exactly the kinds the kube source watches.
    let role = find(&objects, "ClusterRole")[0];
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(["list", "watch"].contains(&verb.as_str().unwrap()), "a verb beyond list/watch: {rule}");
        }
        for r in rule["resources"].as_array().unwrap() {
            granted.push(r.as_str().unwrap().to_string());
        }
    }
    granted.sort();
    assert_eq!(granted, ["namespaces", "networkpolicies", "nodes", "pods"]);
    let binding = find(&objects, "ClusterRoleBinding")[0];
    assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
}
