//! `palisade lab up | probe | exec | apply | down` as a user runs them, on
//! the example shop: the background lab answers, a policy change applied
//! to it shows in the next probe, and `down` leaves no namespace behind.

use std::path::Path;
use std::process::{Command, Output};

mod scenario;
use scenario::privileged;

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade")).args(args).output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the lab also when an assertion fails.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = palisade(&["lab", "down", "--name", &self.0]);
    }
}

#[test]
fn interactive_lab_commands_work_together() {
    if !privileged("lab up/probe/exec/apply/down") {
        return;
    }
    let name = format!("itest{}", std::process::id());
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let shop = shop.to_str().unwrap();
    let _down = Down(name.clone());
    ok(&palisade(&["lab", "up", "-f", shop, "--name", &name, "--port", "tcp/5432"]), "lab up");
    let pid = std::fs::read_to_string(format!("/run/palisade/labs/{name}.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["pid"].as_u64())
        .expect("state file with the lab's pid");

    let probe = |what: &str| ok(&palisade(&["lab", "probe", "--name", &name, "--port", "tcp/5432", "-o", "tsv"]), what);
    let before = probe("lab probe");
    let pair = "shop/api[Deployment]\tdata/postgres[StatefulSet]\ttcp\t5432";
    assert!(before.contains(&format!("{pair}\tallow\tallow")), "{before}");

    let exec = ok(&palisade(&["lab", "exec", "--name", &name, "shop/web", "--", "ip", "-4", "addr"]), "lab exec");
    assert!(exec.contains("inet 10."), "the pod has its address: {exec}");

    // Deny everything into data: the api -> postgres allow is gone.
    let dir = std::env::temp_dir().join(format!("palisade-itest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deny = dir.join("deny.yaml");
    std::fs::write(
        &deny,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: data}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    )
    .unwrap();
    // Policies are additive: leave out the example's own policies.
    let no_policies: Vec<String> =
        ["namespaces.yaml", "workloads.yaml"].iter().map(|f| format!("{shop}/{f}")).collect();
    ok(
        &palisade(&[
            "lab",
            "apply",
            "--name",
            &name,
            "-f",
            &no_policies[0],
            "-f",
            &no_policies[1],
            "-f",
            deny.to_str().unwrap(),
        ]),
        "lab apply",
    );
    let after = probe("lab probe after apply");
    assert!(after.contains(&format!("{pair}\tdeny\tdeny")), "{after}");
    let _ = std::fs::remove_dir_all(&dir);

    ok(&palisade(&["lab", "down", "--name", &name]), "lab down");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("pal-{pid}")))
        .collect();
    assert!(left.is_empty(), "lab down left {left:?}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the lab process {pid} still runs");
}
