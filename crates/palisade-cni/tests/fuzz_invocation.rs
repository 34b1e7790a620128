//! The plugin's reading of the runtime's environment and stdin, fuzzed on
//! stable Rust: what containerd 1.6 really sends (network config with
//! runtimeConfig and prevResult, CNI_ARGS with the pod's name and UID),
//! damaged by proptest. Never a panic, never a hang, and every refusal is
//! a CNI error naming what is wrong. (Issue #13, point 3.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use palisade_cni::plugin::{parse_invocation, run, Command};
use palisade_testkit::mutate::{apply, mutation};
use proptest::prelude::*;

/// The config containerd's CRI plugin passes on stdin for ADD (from the
/// conflist, with `name` and `cniVersion` set and the capabilities' runtime
/// config), and for its DEL after stop (with `prevResult`).
const ADD_CONF: &str = r#"{"agentSocket":"/run/palisade/cni.sock","agentTimeoutMs":5000,"cniVersion":"1.0.0","name":"palisade","runtimeConfig":{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},"type":"palisade-cni"}"#;
const DEL_CONF: &str = r#"{"cniVersion":"1.0.0","name":"palisade","type":"palisade-cni","ipam":{"ranges":["10.244.1.0/24","fd00:10:244:1::/64"]},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"pal0a1b2c3d4e5","mac":"9a:1b:2c:3d:4e:5f"},{"name":"eth0","sandbox":"/var/run/netns/cni-1234"}],"ips":[{"address":"10.244.1.7/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}}"#;
const CNI_ARGS: &str = "K8S_POD_INFRA_CONTAINER_ID=5c1f0e0b9a7d;K8S_POD_UID=0f6c2d3e-4b5a-4c7d-9e8f-1a2b3c4d5e6f;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d9f8-abcde";

fn env(command: &str, args: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "5c1f0e0b9a7d"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", args),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn the_real_inputs_parse() {
    let add = parse_invocation(&env("ADD", CNI_ARGS), ADD_CONF).unwrap();
    assert!(matches!(&add.command, Command::Add { ifname, .. } if ifname == "eth0"));
    assert_eq!(add.args["K8S_POD_UID"], "0f6c2d3e-4b5a-4c7d-9e8f-1a2b3c4d5e6f");
    let del = parse_invocation(&env("DEL", CNI_ARGS), DEL_CONF).unwrap();
    assert!(matches!(del.command, Command::Del { .. }));
    let err = parse_invocation(&env("ADD", "K8S_POD_NAME"), ADD_CONF).unwrap_err();
    assert!(err.details.contains("K8S_POD_NAME") && err.details.contains("KEY=VALUE"), "{err}");
}

const COMMANDS: &[&str] = &["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add"];
const VARS: &[&str] = &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn damaged_invocations_are_refused_with_a_reason(
        conf in 0..2usize,
        command in prop::sample::select(COMMANDS),
        conf_damage in prop::collection::vec(mutation(), 0..5),
        args_damage in prop::collection::vec(mutation(), 0..4),
        dropped in prop::option::of(prop::sample::select(VARS)),
    ) {
        let stdin = apply([ADD_CONF, DEL_CONF][conf], &conf_damage);
        let mut env = env(command, &apply(CNI_ARGS, &args_damage));
        if let Some(var) = dropped {
            env.remove(var);
        }
        let started = Instant::now();
        match parse_invocation(&env, &stdin) {
            Ok(inv) => {
                if let Command::Add { container_id, netns, ifname } = &inv.command {
                    prop_assert!(!container_id.is_empty() && !netns.is_empty() && !ifname.is_empty());
                }
            }
            Err(e) => {
                prop_assert!(!e.msg.is_empty() && !e.details.is_empty(), "an error that says nothing: {e:?}");
                // The whole plugin answers the same way: a CNI error on
                // stdout, exit 1 (VERSION always answers).
                if command != "VERSION" {
                    let out = run(&env, &stdin);
                    prop_assert_eq!(out.exit, 1);
                    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                    prop_assert_eq!(answer["code"].as_u64(), Some(e.code as u64), "{}", out.stdout);
                }
            }
        }
        if command == "VERSION" {
            let out = run(&env, &stdin);
            prop_assert_eq!(out.exit, 0);
        }
        prop_assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }
}
