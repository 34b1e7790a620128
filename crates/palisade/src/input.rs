//! From paths to a compiled engine, reporting every problem on the way.

use std::io::IsTerminal;
use std::path::PathBuf;

use palisade_engine::Engine;
use palisade_model::{parse_sources, read_paths, Cluster, Visibility};

/// Outcome the binary maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Input could not be used; details were already printed.
    #[error("{0}")]
    Input(String),
    /// The command ran and found what it was asked to fail on.
    #[error("{0}")]
    Findings(String),
    #[error("{0}")]
    Usage(String),
}

/// Messages to stderr: coloured on a terminal, plain when piped.
pub struct Ui {
    color: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

impl Ui {
    pub fn new() -> Self {
        Ui { color: std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn error(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("1;31", "error:"));
    }

    pub fn warn(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("1;33", "warning:"));
    }

    pub fn note(&self, msg: &str) {
        eprintln!("{} {msg}", self.paint("1;36", "note:"));
    }

    pub fn severity(&self, severity: &str) -> String {
        match severity {
            "error" => self.paint("1;31", severity),
            "warning" => self.paint("1;33", severity),
            _ => self.paint("1;36", severity),
        }
    }
}

/// Reads, validates and assembles a cluster. Invalid input stops here
/// unless `skip_invalid`, so an analysis never runs on half a cluster by
/// accident.
pub fn load_cluster(paths: &[PathBuf], skip_invalid: bool, ui: &Ui) -> Result<Cluster, Failure> {
    let (sources, problems) = read_paths(paths);
    assemble(parse_sources(&sources), problems, skip_invalid, ui)
}

/// The cluster behind a kubeconfig context, read with one list of each
/// kind Palisade reads (Namespaces, Nodes, NetworkPolicies, Pods).
pub fn load_live_cluster(context: Option<&str>, skip_invalid: bool, ui: &Ui) -> Result<Cluster, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Input(format!("cannot start the async runtime: {e}")))?;
    let objects = runtime.block_on(async {
        let client = palisade_agent::kube_source::client(context).await?;
        palisade_agent::kube_source::list_objects(client).await.map_err(|e| e.to_string())
    });
    let objects = objects.map_err(|e| Failure::Input(format!("reading the cluster: {e}")))?;
    ui.note(&format!("read {} objects from the cluster", objects.len()));
    assemble(palisade_model::parse_values(objects), Vec::new(), skip_invalid, ui)
}

/// Manifests or the API server, as the input arguments say.
pub fn load_input(input: &crate::cli::InputArgs, ui: &Ui) -> Result<(Cluster, Engine), Failure> {
    let cluster = if input.cluster {
        load_live_cluster(input.context.as_deref(), input.skip_invalid, ui)?
    } else {
        load_cluster(&input.paths, input.skip_invalid, ui)?
    };
    let engine = Engine::from_cluster(&cluster);
    Ok((cluster, engine))
}

fn assemble(
    manifests: palisade_model::Manifests,
    problems: Vec<palisade_model::Problem>,
    skip_invalid: bool,
    ui: &Ui,
) -> Result<Cluster, Failure> {
    let seen = Visibility::of(&manifests.objects);
    assemble_seeing(manifests, problems, skip_invalid, ui, &seen)
}

fn assemble_seeing(
    manifests: palisade_model::Manifests,
    mut problems: Vec<palisade_model::Problem>,
    skip_invalid: bool,
    ui: &Ui,
    seen: &Visibility,
) -> Result<Cluster, Failure> {
    let skipped = manifests.skipped.clone();
    if manifests.finished_pods > 0 {
        ui.note(&format!(
            "left out {} finished pod(s) (phase Succeeded or Failed): they hold no address",
            manifests.finished_pods
        ));
    }
    let (cluster, more, notices) = Cluster::from_manifests_seeing(manifests, seen);
    problems.extend(more);
    for n in &notices {
        ui.note(&n.0);
    }
    if !skipped.is_empty() {
        let kinds: Vec<String> = skipped.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        ui.note(&format!("skipped objects of kinds palisade does not read: {}", kinds.join(", ")));
    }
    if problems.is_empty() {
        return Ok(cluster);
    }
    for p in &problems {
        if skip_invalid && !matches!(p, palisade_model::Problem::Read { .. }) {
            ui.warn(&format!("skipped: {p}"));
        } else {
            ui.error(&p.to_string());
        }
    }
    // A path that cannot be read is not an invalid object: skipping it
    // would analyze a different cluster than the one asked about.
    let unreadable = problems.iter().filter(|p| matches!(p, palisade_model::Problem::Read { .. })).count();
    if skip_invalid && unreadable == 0 {
        Ok(cluster)
    } else {
        Err(Failure::Input(format!(
            "{} problem(s) in the input; fix them, or pass --skip-invalid to analyze without the invalid objects",
            problems.len()
        )))
    }
}

/// Two states to compare, their replicas told apart by what either one's
/// policies see: a policy change does not rename the endpoints.
pub fn load_pair(old: &[PathBuf], new: &[PathBuf], skip_invalid: bool, ui: &Ui) -> Result<(Engine, Engine), Failure> {
    let read = |paths: &[PathBuf]| {
        let (sources, problems) = read_paths(paths);
        (parse_sources(&sources), problems)
    };
    let ((old_m, old_p), (new_m, new_p)) = (read(old), read(new));
    let seen = Visibility::of(&old_m.objects).union(&Visibility::of(&new_m.objects));
    let old = assemble_seeing(old_m, old_p, skip_invalid, ui, &seen)?;
    let new = assemble_seeing(new_m, new_p, skip_invalid, ui, &seen)?;
    Ok((Engine::from_cluster(&old), Engine::from_cluster(&new)))
}

/// `tcp/80` -> (TCP, 80).
pub fn parse_probe(s: &str) -> Result<(palisade_model::Protocol, u16), Failure> {
    let bad = || {
        Failure::Usage(format!("{s:?}: expected PROTO/PORT with PROTO tcp, udp or sctp and PORT 1-65535, e.g. tcp/80"))
    };
    let (proto, port) = s.split_once('/').ok_or_else(bad)?;
    let protocol = palisade_model::Protocol::parse_api(&proto.to_ascii_uppercase()).ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    Ok((protocol, port))
}

/// Does an endpoint match a filter: its key, `ns/*`, `*/name` or `*`; a
/// workload's `ns/name[Kind]` also names all its variants, and `ns/pod`
/// names the endpoint that pod is part of.
pub fn endpoint_matches(pattern: &str, endpoint: &palisade_model::Endpoint) -> bool {
    let key = &endpoint.key;
    if pattern == "*" {
        return true;
    }
    let shown = key.to_string();
    if shown == pattern {
        return true;
    }
    match pattern.split_once('/') {
        Some((ns, "*")) => key.namespace == ns,
        Some(("*", name)) => {
            name == key.name
                || shown.split_once('/').is_some_and(|(_, n)| n == name)
                || endpoint.pods.iter().any(|p| p == name)
        }
        _ => {
            let p = palisade_model::EndpointKey::parse(pattern);
            p.namespace == key.namespace
                && ((p.name == key.name
                    && (p.kind.is_none() || p.kind == key.kind)
                    && (p.variant.is_none() || p.variant == key.variant))
                    || (p.kind.is_none() && endpoint.pods.contains(&p.name)))
        }
    }
}
