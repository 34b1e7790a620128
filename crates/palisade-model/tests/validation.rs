//! One test per validation rule: each error names the file, the document,
//! the object, the field path and what is wrong.

use palisade_model::{parse_sources, Cluster, Source};

fn problems(yaml: &str) -> Vec<String> {
    let m = parse_sources(&[Source { name: "in.yaml".into(), text: yaml.into() }]);
    let (_, problems, _) = Cluster::from_manifests(m);
    problems.iter().map(|p| p.to_string()).collect()
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
    )
}

#[track_caller]
fn assert_one(yaml: &str, expected: &str) {
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    assert_eq!(p[0], expected);
}

const HEAD: &str = "in.yaml (document 1): NetworkPolicy ns/p: ";

#[test]
fn selector_operator_must_be_known() {
    assert_one(
        &policy("  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}"),
        &format!("{HEAD}spec.podSelector.matchExpressions[0].operator: \"Equals\": not a valid selector operator (In, NotIn, Exists, DoesNotExist)"),
    );
}

#[test]
fn in_and_notin_need_values() {
    assert_one(
        &policy("  podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}"),
        &format!(
            "{HEAD}spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"
        ),
    );
}

#[test]
fn exists_and_doesnotexist_take_no_values() {
    assert_one(
        &policy("  podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [x]}]}"),
        &format!("{HEAD}spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
    );
}

#[test]
fn label_keys_and_values_are_checked() {
    let p = problems(&policy("  podSelector: {matchLabels: {\"bad key\": ok, good: \"-bad\"}}"));
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("spec.podSelector.matchLabels: \"bad key\": name part must consist"), "{}", p[0]);
    assert!(p[0].contains("spec.podSelector.matchLabels[good]: \"-bad\": a valid label value"), "{}", p[0]);
}

#[test]
fn port_numbers_are_1_to_65535() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].port: 0: must be between 1 and 65535, inclusive"),
    );
    assert_one(
        &policy("  podSelector: {}\n  egress: [{ports: [{port: 80, endPort: 70000}]}]"),
        &format!("{HEAD}spec.egress[0].ports[0].endPort: 70000: must be between 1 and 65535, inclusive"),
    );
}

#[test]
fn named_ports_are_iana_service_names() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{port: \"my--port\"}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].port: \"my--port\": must not contain consecutive hyphens"),
    );
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{port: \"80\"}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].port: \"80\": must contain at least one letter (a-z)"),
    );
}

#[test]
fn endport_needs_a_numeric_port_not_below_it() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{endPort: 90}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].endPort: may not be specified when `port` is not specified"),
    );
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 90}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].endPort: may not be specified when `port` is non-numeric"),
    );
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].endPort: 80: must be greater than or equal to `port` 90"),
    );
}

#[test]
fn protocol_is_tcp_udp_or_sctp() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{ports: [{protocol: tcp, port: 80}]}]"),
        &format!("{HEAD}spec.ingress[0].ports[0].protocol: \"tcp\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
    );
}

#[test]
fn ipblock_cidr_must_parse() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]"),
        &format!("{HEAD}spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
    );
}

#[test]
fn ipblock_except_is_a_strict_subset() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]"),
        &format!("{HEAD}spec.ingress[0].from[0].ipBlock.except[0]: \"10.1.0.0/24\": must be a strict subset of `cidr` 10.0.0.0/16"),
    );
    assert_one(
        &policy("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]"),
        &format!("{HEAD}spec.egress[0].to[0].ipBlock.except[0]: \"10.0.0.0/16\": must be a strict subset of `cidr` 10.0.0.0/16"),
    );
}

#[test]
fn a_peer_is_selectors_or_ipblock() {
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{from: [{}]}]"),
        &format!("{HEAD}spec.ingress[0].from[0]: must specify a peer"),
    );
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]}]"),
        &format!("{HEAD}spec.ingress[0].from[0]: may not specify both ipBlock and another peer"),
    );
}

#[test]
fn policy_types_are_ingress_or_egress() {
    assert_one(
        &policy("  podSelector: {}\n  policyTypes: [Ingress, Outbound]"),
        &format!("{HEAD}spec.policyTypes[1]: \"Outbound\": supported values: \"Ingress\", \"Egress\""),
    );
    let p = problems(&policy("  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]"));
    assert!(p[0].contains("spec.policyTypes: may not specify more than two policyTypes"), "{p:?}");
}

#[test]
fn objects_need_valid_names() {
    assert_one(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: ns}\nspec: {podSelector: {}}",
        "in.yaml (document 1): NetworkPolicy ns/: metadata.name: required",
    );
    let p = problems("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}");
    assert!(
        p[0].starts_with(
            "in.yaml (document 1): Namespace Bad_Name: metadata.name: \"Bad_Name\": a lowercase RFC 1123 label"
        ),
        "{p:?}"
    );
}

#[test]
fn api_version_must_be_served() {
    assert_one(
        "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec: {podSelector: {}}",
        &format!("{HEAD}apiVersion: \"extensions/v1beta1\": NetworkPolicy is read as networking.k8s.io/v1"),
    );
}

#[test]
fn type_errors_name_the_field() {
    let p = problems(&policy("  podSelector: {matchLabels: [a, b]}"));
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with(&format!("{HEAD}spec.podSelector.matchLabels: invalid type")), "{p:?}");
}

#[test]
fn documents_are_counted_and_syntax_errors_reported() {
    let p = problems("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("in.yaml (document 2): not valid YAML or JSON"), "{p:?}");
    let p = problems("--- 42\n");
    assert_eq!(p, vec!["in.yaml (document 1): not a Kubernetes object: the document is not a mapping"]);
    let p = problems("apiVersion: v1\nmetadata: {name: a}\n");
    assert_eq!(p, vec!["in.yaml (document 1): not a Kubernetes object: no `kind`"]);
}

#[test]
fn duplicates_are_reported_with_the_first_location() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let p = problems(&format!("{ns}---\n{ns}"));
    assert_eq!(
        p,
        vec!["in.yaml (document 2): Namespace a: metadata.name: declared twice: first at in.yaml (document 1)"]
    );
}

#[test]
fn unknown_kinds_are_counted_not_fatal() {
    let m = parse_sources(&[Source {
        name: "in.yaml".into(),
        text: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n".into(),
    }]);
    assert!(m.problems.is_empty());
    assert_eq!(m.skipped.get("ConfigMap"), Some(&1));
}

#[test]
fn lists_and_json_are_read() {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"}, "status": {"podIP": "not-an-ip"}}]}"#;
    let p = problems(list);
    assert_eq!(
        p,
        vec!["in.yaml (document 1, item 1): Pod a/p: status.podIP: \"not-an-ip\": must be a valid IP address"]
    );
}

/// Regression: items of a typed list (`PodList`, as `kubectl get --raw`
/// and client-go return it) carry no `kind`; every one was refused.
#[test]
fn typed_list_items_take_kind_and_api_version_from_the_list() {
    let lists = r#"{"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
        "items": [{"metadata": {"name": "a", "labels": {"team": "x"}}}]}
{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
        "items": [{"metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"}}, "status": {"podIP": "10.0.0.1"}}]}
{"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {},
        "items": [{"metadata": {"name": "d", "namespace": "a"}, "spec": {"selector": {}, "template": {"metadata": {"labels": {"app": "d"}}}}}]}
{"kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1", "metadata": {},
        "items": [{"metadata": {"name": "deny", "namespace": "a"}, "spec": {"podSelector": {}}}]}"#;
    let m = parse_sources(&[Source { name: "dump.json".into(), text: lists.into() }]);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let (c, assembled, _) = Cluster::from_manifests(m);
    assert!(assembled.is_empty(), "{assembled:?}");
    assert_eq!(c.namespaces["a"].labels.get("team").map(String::as_str), Some("x"));
    let keys: Vec<String> = c.endpoints.iter().map(|e| e.key.to_string()).collect();
    assert_eq!(keys, ["a/d[Deployment]", "a/p"]);
    assert_eq!(c.policies.len(), 1);
    // An item's own kind wins; a wrong apiVersion in the list is still an error.
    let wrong =
        r#"{"kind": "PodList", "apiVersion": "apps/v1", "items": [{"metadata": {"name": "p", "namespace": "a"}}]}"#;
    assert_eq!(problems(wrong), ["in.yaml (document 1, item 0): Pod a/p: apiVersion: \"apps/v1\": Pod is read as v1"]);
}

/// Empty and `null` documents are skipped, as kubectl skips them.
#[test]
fn empty_and_null_documents_are_skipped() {
    let yaml = "---\n---\n# only a comment\n---\nnull\n---\n~\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n";
    let m = parse_sources(&[Source { name: "in.yaml".into(), text: yaml.into() }]);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.objects.len(), 1);
    let json = "null\n{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [null]}\n{\"apiVersion\": \"v1\", \"kind\": \"PodList\", \"items\": null}\n";
    let m = parse_sources(&[Source { name: "in.json".into(), text: json.into() }]);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert!(m.objects.is_empty());
    assert!(m.skipped.is_empty(), "an empty typed list is not a kind we skip: {:?}", m.skipped);
}

#[test]
fn plain_scalars_read_as_kubectl_reads_them() {
    // `y` and `2` in string fields are strings, as with kubectl (YAML 1.1 would say true).
    let m = parse_sources(&[Source {
        name: "in.yaml".into(),
        text: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: y\n  labels: {on: y, version: \"2\"}\n".into(),
    }]);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let (c, _, _) = Cluster::from_manifests(m);
    assert_eq!(c.namespaces["y"].labels.get("on").map(String::as_str), Some("y"));
}

#[test]
fn all_errors_of_an_object_are_reported_together() {
    let p = problems(&policy("  podSelector: {}\n  ingress: [{ports: [{port: 0}, {protocol: ICMP}]}]"));
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("\n  spec.ingress[0].ports[0].port") && p[0].contains("\n  spec.ingress[0].ports[1].protocol"),
        "{}",
        p[0]
    );
}

#[test]
fn container_port_names_are_unique_in_a_pod() {
    let p = problems(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\nspec:\n  containers:\n  - {name: a, image: i, ports: [{name: http, containerPort: 80}]}\n  - {name: b, image: i, ports: [{name: http, containerPort: 8080}]}\n",
    );
    assert_eq!(p, vec!["in.yaml (document 1): Pod ns/p: spec.containers[1].ports[0].name: \"http\": Duplicate value"]);
}

#[test]
fn unknown_policy_fields_fail_closed() {
    // `fromm` would otherwise read as a rule without `from`: allow all.
    assert_one(
        &policy("  podSelector: {}\n  ingress: [{fromm: [{podSelector: {}}]}]"),
        &format!("{HEAD}spec.ingress[0].fromm: unknown field"),
    );
    assert_one(
        &policy("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, excpet: [10.1.0.0/16]}}]}]"),
        &format!("{HEAD}spec.egress[0].to[0].ipBlock.excpet: unknown field"),
    );
}

#[test]
fn a_policy_without_spec_denies_all_ingress_in_its_namespace() {
    let m = parse_sources(&[Source {
        name: "in.yaml".into(),
        text: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: ns}\n".into(),
    }]);
    let (c, problems, _) = Cluster::from_manifests(m);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(c.policies[0].pod_selector.is_everything());
    assert_eq!(c.policies[0].ingress, Some(vec![]));
    assert_eq!(c.policies[0].egress, None);
}

#[test]
fn list_items_in_yaml_keep_plain_scalars_as_strings() {
    let p = problems("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: y, labels: {enabled: yes}}\n");
    assert!(p.is_empty(), "{p:?}");
}
