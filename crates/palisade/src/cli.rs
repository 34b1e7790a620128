//! Command-line definitions (clap derive): the whole surface in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Kubernetes network security: analyze, explain, lint and diff NetworkPolicies"
)]
#[command(
    long_about = "Palisade reads Kubernetes manifests (files, directories, or - for stdin) and answers what traffic \
their NetworkPolicies allow, with the exact upstream semantics.\n\nExit codes: 0 success; 1 findings or changes that \
the command was asked to fail on; 2 invalid input or usage."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Connectivity of the cluster the manifests describe.
    Analyze(AnalyzeArgs),
    /// The decision chain for one connection, rule by rule, on both sides.
    Explain(ExplainArgs),
    /// Findings a reviewer wants: dead selectors, shadowed rules, missing default-deny, ...
    Lint(LintArgs),
    /// Connections gained and lost between two sets of manifests.
    Diff(DiffArgs),
    /// A real cluster network in network namespaces on this machine (root): real packets against the engine.
    #[command(subcommand)]
    Lab(LabCommand),
    /// The node agent: keeps this node's kernel in step with the cluster and confirms pods to palisade-cni (root).
    Agent(AgentArgs),
    /// Benchmark tools: generate realistic clusters.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

#[derive(Args)]
pub struct AgentArgs {
    /// A directory of manifests to read the cluster from (re-read when it changes).
    #[arg(long, value_name = "PATH", required_unless_present = "kube", conflicts_with = "kube")]
    pub dir: Option<PathBuf>,
    /// Watch the cluster's API server (Pods, Namespaces, NetworkPolicies, Nodes) instead: in a pod, with its
    /// service account; elsewhere, with the kubeconfig.
    #[arg(long)]
    pub kube: bool,
    /// The kubeconfig context to use with --kube (default: the current one).
    #[arg(long, requires = "kube")]
    pub context: Option<String>,
    /// Where palisade-cni connects to have pods confirmed.
    #[arg(long, default_value = "/run/palisade/cni.sock")]
    pub socket: PathBuf,
    /// Program the kernel of this named network namespace instead of the agent's own (the lab's nodes).
    #[arg(long)]
    pub netns: Option<String>,
    /// What happens to denied traffic.
    #[arg(long, value_enum, default_value = "drop", env = "PALISADE_DENY")]
    pub deny: DenyArg,
    /// How often the directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Apply a burst of source changes once the source is quiet this long (ms); never later than 10x this.
    /// Default: 5 with --kube (events arrive as they happen), 50 with --dir (an editor writes in bursts).
    #[arg(long)]
    pub debounce_ms: Option<u64>,
    /// Keep established connections a policy change forbids (default: end them within a second).
    #[arg(long, env = "PALISADE_KEEP_ESTABLISHED")]
    pub keep_established: bool,
    /// Where the agent remembers the pods wired on this node, to take them back after a restart.
    #[arg(long, default_value = "/var/lib/palisade/agent/local-pods.json")]
    pub state_file: PathBuf,
    /// Serve /healthz, /readyz and /metrics here.
    #[arg(long, default_value = "127.0.0.1:9471")]
    pub metrics_addr: std::net::SocketAddr,
    /// Log format: text on a terminal, JSON lines otherwise (auto).
    #[arg(long, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// This node's name: its Node object's spec.podCIDRs are the ranges palisade-cni allocates from when its
    /// config names none.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Exit when this process is gone (the lab's agents end with the lab).
    #[arg(long, hide = true)]
    pub owner_pid: Option<i32>,
    /// Where the node's sysctls are read and written (IP forwarding): a container's own /proc/sys is read-only,
    /// so the DaemonSet mounts the node's here.
    #[arg(long, default_value = "/proc/sys")]
    pub sysctl_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Args)]
pub struct InputArgs {
    /// Manifest files or directories (recursive; .yaml, .yml, .json); - reads stdin.
    #[arg(value_name = "PATH", default_value = "-")]
    pub paths: Vec<PathBuf>,
    /// Report invalid objects and go on without them, instead of refusing to run.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Read the cluster from its API server (kubeconfig: $KUBECONFIG or ~/.kube/config; in a pod, its service
    /// account) instead of manifests.
    #[arg(long, conflicts_with = "paths")]
    pub cluster: bool,
    /// The kubeconfig context to use with --cluster (default: the current one).
    #[arg(long, requires = "cluster")]
    pub context: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnalyzeFormat {
    Table,
    Json,
    /// JSON Lines: one row (or, with --pairs, one pair) per line.
    Jsonl,
    Tsv,
    Dot,
    Html,
}

#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: AnalyzeFormat,
    /// Probe verdicts per pair for PROTO/PORT (tcp, udp, sctp), e.g. --port tcp/80; repeatable.
    #[arg(long = "port", value_name = "PROTO/PORT")]
    pub ports: Vec<String>,
    /// Only these sources: an endpoint (ns/name, ns/name[Kind]), a pod's ns/name, ns/*, or an address or
    /// CIDR outside the cluster (its ranges); repeatable.
    #[arg(long = "from")]
    pub from: Vec<String>,
    /// Only these destinations, as --from.
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// One row per ordered pair instead of grouped rows (-o tsv, json, jsonl), streamed.
    #[arg(long)]
    pub pairs: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    Table,
    Json,
}

#[derive(Args)]
pub struct ExplainArgs {
    /// Source endpoint (ns/name or ns/name[Kind]) or IP address.
    pub src: String,
    /// Destination endpoint or IP address.
    pub dst: String,
    /// PROTO/PORT, e.g. tcp/80.
    pub port: String,
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: TextOrJson,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum FailOn {
    Info,
    Warning,
    Error,
    Never,
}

#[derive(Args)]
pub struct LintArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: TextOrJson,
    /// Exit 1 when a finding at or above this severity is present.
    #[arg(long, value_enum, default_value = "warning")]
    pub fail_on: FailOn,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The manifests before (file or directory).
    pub old: PathBuf,
    /// The manifests after (file or directory).
    pub new: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: TextOrJson,
    /// Report invalid objects and go on without them.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Exit 1 when any connection is gained or lost.
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Write a realistic generated cluster as multi-document YAML to stdout.
    Gen(GenArgs),
    /// Time every phase of the analysis on a generated cluster.
    Engine(GenArgs),
    /// Run every output format of `palisade analyze` on a generated cluster, each as its own process: wall
    /// time against the parse time of the same input, peak memory, output size.
    Analyze(BenchAnalyzeArgs),
    /// Measure enforcement in a lab (root): throughput, RR and CRR against no filtering and a conntrack-only
    /// table, with N peer entries; full and single-pod apply times on a generated cluster.
    Dataplane(BenchDataplaneArgs),
    /// Measure the node agent (root): first sync, pod confirmation, single-pod change latency and memory at a
    /// generated cluster's scale, and full CNI ADD latency.
    Agent(BenchAgentArgs),
}

#[derive(Args)]
pub struct BenchAgentArgs {
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    #[arg(long, default_value_t = 5_000)]
    pub policies: usize,
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// At most this many of node-0's pods are confirmed as local.
    #[arg(long, default_value_t = 1_000)]
    pub local: usize,
    /// Single-pod changes to time.
    #[arg(long, default_value_t = 200)]
    pub changes: usize,
    /// Full CNI ADDs to time.
    #[arg(long, default_value_t = 50)]
    pub adds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PairedPart {
    Both,
    Rules,
    Checks,
}

#[derive(Args)]
pub struct BenchDataplaneArgs {
    /// Peer entries to compile the policy to, repeatable.
    #[arg(long = "entries", default_values_t = vec![0, 1000, 10000, 50000])]
    pub entries: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Rounds per measurement (the median is reported); with --interleave, rounds of every configuration; with
    /// --paired, pairs per entry count (rounded up to an even number).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Pods of the generated cluster for the apply timings.
    #[arg(long, default_value_t = 10000)]
    pub pods: usize,
    #[arg(long, default_value_t = 5000)]
    pub policies: usize,
    /// Measure configurations in turn within each round (an order rotated each round) and report the median of the
    /// per-round ratios to the conntrack floor, with the interquartile range. Includes the no-filtering floor.
    #[arg(long)]
    pub interleave: bool,
    /// Per entry count, `--rounds` pairs of adjacent slices (conntrack floor, Palisade), swapping only the forward
    /// hook's rules and the veths' sender checks between them; reports the geometric mean of the per-pair ratios
    /// with a 95% confidence interval. The most precise comparison on a noisy machine.
    #[arg(long, conflicts_with = "interleave")]
    pub paired: bool,
    /// Pin the bench (client, servers, and so the kernel work they cause) to this CPU: a rate then measures the CPU
    /// cost of an operation, without the scheduler's placement noise of a shared machine.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// With --paired: write every pair's rates (floor and Palisade) to this TSV file.
    #[arg(long)]
    pub samples: Option<std::path::PathBuf>,
    /// With --paired: what the Palisade slices add to the floor. `both` (the comparison of record), or one part
    /// alone to see where the cost is: `rules` (Palisade's forward chain, no veth checks) or `checks` (the veth
    /// sender checks under the floor's rules).
    #[arg(long, value_enum, default_value_t = PairedPart::Both)]
    pub part: PairedPart,
    /// Skip the apply timings at the end.
    #[arg(long)]
    pub no_apply_times: bool,
}

#[derive(Args)]
pub struct BenchAnalyzeArgs {
    #[command(flatten)]
    pub gen: GenArgs,
    /// Runs per format (the median is reported).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Exit non-zero when a format misses its targets.
    #[arg(long)]
    pub check: bool,
    /// (internal) Measure one `palisade analyze FILE ARGS...` run as this process's only child.
    #[arg(long, hide = true, value_name = "FILE")]
    pub measure: Option<PathBuf>,
    #[arg(last = true, hide = true)]
    pub analyze_args: Vec<String>,
}

#[derive(Args, Clone)]
pub struct GenArgs {
    #[arg(long, default_value_t = 20)]
    pub namespaces: usize,
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    #[arg(long, default_value_t = 200)]
    pub policies: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build the cluster, serve every port in every pod, apply the policies, probe every pair, compare with the
    /// engine, tear down. Exit 1 if any probe disagrees with the engine.
    Run(LabRunArgs),
    /// Build the cluster and keep it running in the background (a lab process serves the pods).
    Up(LabUpArgs),
    /// Apply (other) manifests' policies and labels to the running lab: one atomic transaction per node.
    Apply(LabApplyArgs),
    /// Probe every pair of the running lab and compare with the engine.
    Probe(LabProbeArgs),
    /// Run a command inside a pod (ns/name), a node (its name) or the external host (`external`).
    Exec(LabExecArgs),
    /// Stop the running lab, and remove leftovers of lab runs whose process is gone (all labs with --all).
    Down(LabDownArgs),
    /// The background process of `lab up` (not for direct use).
    #[command(hide = true)]
    Serve(LabUpArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DenyArg {
    /// Silently drop: the client times out.
    Drop,
    /// TCP reset, ICMP admin-prohibited otherwise: the client fails fast.
    Reject,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeFormat {
    Table,
    Json,
    Tsv,
}

#[derive(Args, Clone)]
pub struct LabBuildArgs {
    /// Manifest files or directories, as for analyze; repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Report invalid objects and go on without them.
    #[arg(long)]
    pub skip_invalid: bool,
    /// At least this many nodes (pods keep spec.nodeName; others are spread evenly).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Probe PROTO/PORT (tcp, udp, sctp), repeatable; default: every declared container port.
    #[arg(long = "port", value_name = "PROTO/PORT")]
    pub ports: Vec<String>,
    /// How the kernel ends denied traffic.
    #[arg(long, value_enum, default_value = "drop")]
    pub deny: DenyArg,
    /// Keep established connections that a policy change forbids (default: end them within a second).
    #[arg(long)]
    pub keep_established: bool,
    /// How pods are wired and kernels programmed: `agents` runs a palisade agent per node and wires pods with
    /// palisade-cni, as a deployment does; `direct` has the lab do both itself.
    #[arg(long, value_enum, default_value = "agents")]
    pub wiring: Wiring,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Wiring {
    Agents,
    Direct,
}

#[derive(Args)]
pub struct LabRunArgs {
    #[command(flatten)]
    pub build: LabBuildArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: ProbeFormat,
    /// Per-probe timeout in milliseconds (a dropped probe waits this long).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

#[derive(Args, Clone)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub build: LabBuildArgs,
    /// The lab's name, for running several.
    #[arg(long, default_value = "default")]
    pub name: String,
}

#[derive(Args)]
pub struct LabApplyArgs {
    /// Manifest files or directories (the same pods; policies, labels and namespaces may change).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long)]
    pub skip_invalid: bool,
    #[arg(long, default_value = "default")]
    pub name: String,
}

#[derive(Args)]
pub struct LabProbeArgs {
    /// Probe PROTO/PORT, repeatable; default: the ports the lab serves.
    #[arg(long = "port", value_name = "PROTO/PORT")]
    pub ports: Vec<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: ProbeFormat,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    #[arg(long, default_value = "default")]
    pub name: String,
}

#[derive(Args)]
pub struct LabExecArgs {
    /// ns/name of a pod, a node name, or `external`.
    pub target: String,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[arg(long, default_value = "default")]
    pub name: String,
}

#[derive(Args)]
pub struct LabDownArgs {
    /// Also remove labs whose process is still running.
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value = "default")]
    pub name: String,
}
