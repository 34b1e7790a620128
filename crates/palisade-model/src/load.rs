//! Reading manifests: files, directories (recursive), stdin; multi-document
//! YAML, JSON, and `List` kinds. Every object keeps where it came from so an
//! error can name the file, the document and the object.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::endpoint::{self, Endpoint, EndpointKey};
use crate::field::{FieldError, FieldErrors, FieldPath};
use crate::names;
use crate::objects::{Namespace, Node, Service};
use crate::policy::NetworkPolicy;

/// One input: a file's path (or `-` for stdin) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Where an object was read: file, 1-based document index, and item index
/// within a `List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}", self.file, self.document)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        f.write_str(")")
    }
}

/// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Endpoint(Endpoint),
    NetworkPolicy(NetworkPolicy),
    Node(Node),
    Service(Service),
}

#[derive(Debug, Clone)]
pub struct Located {
    pub location: Location,
    pub object_ref: ObjectRef,
    pub object: Object,
}

/// Input that cannot be used, with everything needed to find and fix it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Problem {
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}: not valid YAML or JSON: {reason}")]
    Syntax { file: String, reason: String },
    #[error("{location}: not a Kubernetes object: {reason}")]
    NotAnObject { location: Location, reason: String },
    #[error("{location}: {object}: {}", join_errors(.errors))]
    Invalid { location: Location, object: ObjectRef, errors: Vec<FieldError> },
}

/// One error stays on the line; several go one per indented line.
fn join_errors(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => many.iter().map(|e| format!("\n  {e}")).collect(),
    }
}

/// Everything read from a set of sources.
#[derive(Debug, Default)]
pub struct Manifests {
    pub objects: Vec<Located>,
    pub problems: Vec<Problem>,
    /// Kinds we do not read, with how many objects of each were skipped.
    pub skipped: BTreeMap<String, usize>,
    /// Pods that have finished (phase Succeeded or Failed), left out: they
    /// hold no address (it may already be another pod's), so policies
    /// neither select nor allow them. Every source reads them this way.
    pub finished_pods: usize,
}

impl Manifests {
    /// A node's view: every Pod is its own endpoint (`ns/name`), whatever
    /// owns it, as the CNI plugin wires and the agent confirms pods one by
    /// one. The analysis tools keep replicas grouped into their workload.
    pub fn per_pod(mut self) -> Self {
        for located in &mut self.objects {
            if let Object::Endpoint(ep) = &mut located.object {
                if let [pod] = ep.pods.as_slice() {
                    if located.object_ref.kind == "Pod" {
                        ep.key = EndpointKey::pod(&ep.key.namespace, pod);
                    }
                }
            }
        }
        self
    }
}

/// Reads paths: `-` is stdin; directories are walked recursively in name
/// order for `.yaml`, `.yml` and `.json` files. Unreadable paths become problems.
pub fn read_paths(paths: &[PathBuf]) -> (Vec<Source>, Vec<Problem>) {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => sources.push(Source { name: "-".into(), text }),
                Err(e) => problems.push(Problem::Read { file: "-".into(), reason: e.to_string() }),
            }
        } else {
            collect(path, true, &mut sources, &mut problems);
        }
    }
    (sources, problems)
}

fn collect(path: &Path, explicit: bool, sources: &mut Vec<Source>, problems: &mut Vec<Problem>) {
    let name = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return problems.push(Problem::Read { file: name, reason: e.to_string() }),
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return problems.push(Problem::Read { file: name, reason: e.to_string() }),
        };
        entries.sort();
        for entry in entries {
            collect(&entry, false, sources, problems);
        }
        return;
    }
    let wanted = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
    if !explicit && !wanted {
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => sources.push(Source { name, text }),
        Err(e) => problems.push(Problem::Read { file: name, reason: e.to_string() }),
    }
}

/// Parses sources into objects. Never fails as a whole: every unusable
/// document or object becomes a [`Problem`] and parsing goes on.
pub fn parse_sources(sources: &[Source]) -> Manifests {
    let mut out = Manifests::default();
    for source in sources {
        match documents(source) {
            Err(reason) => out.problems.push(Problem::Syntax { file: source.name.clone(), reason }),
            Ok(docs) => {
                for (i, doc) in docs.into_iter().enumerate() {
                    let location = Location { file: source.name.clone(), document: i + 1, item: None };
                    parse_document(doc, location, &mut out);
                }
            }
        }
    }
    out
}

/// The YAML documents of `source`, as [`parse_sources`] splits them
/// (`None`: the source is JSON, read whole).
pub fn yaml_documents(source: &Source) -> Option<Vec<&str>> {
    let trimmed = source.text.trim_start();
    if source.name.ends_with(".json") || trimmed.starts_with('{') || trimmed.starts_with('[') {
        return None;
    }
    Some(split_yaml(&source.text))
}

/// Document `document` (from 1) of file `file`, read exactly as
/// [`parse_sources`] reads it: a caller that kept the other documents'
/// objects need not read them again.
pub fn parse_yaml_document(file: &str, document: usize, text: &str) -> Manifests {
    let mut out = Manifests::default();
    parse_document(Doc::Yaml(text), Location { file: file.to_string(), document, item: None }, &mut out);
    out
}

/// Reads objects already parsed as JSON (from the API server), each named
/// for error messages (`kube:Pod/ns/name`): the same readers and checks
/// as manifest files.
pub fn parse_values(objects: Vec<(String, Value)>) -> Manifests {
    let mut out = Manifests::default();
    for (name, value) in objects {
        let location = Location { file: name, document: 1, item: None };
        parse_document(Doc::Json(value), location, &mut out);
    }
    out
}

/// One document, as text (YAML) or as a parsed JSON value.
enum Doc<'a> {
    Yaml(&'a str),
    Json(Value),
}

fn documents(source: &Source) -> Result<Vec<Doc<'_>>, String> {
    let trimmed = source.text.trim_start();
    if source.name.ends_with(".json") || trimmed.starts_with('{') || trimmed.starts_with('[') {
        // JSON: one value, or a stream of values.
        let stream = serde_json::Deserializer::from_str(&source.text).into_iter::<Value>();
        if let Ok(values) = stream.collect::<Result<Vec<_>, _>>() {
            return Ok(values.into_iter().map(Doc::Json).collect());
        }
    }
    Ok(split_yaml(&source.text).into_iter().map(Doc::Yaml).collect())
}

/// Splits a YAML stream at `---` and `...` lines. Each document is then
/// deserialized straight into its Kubernetes type, which keeps kubectl's
/// reading of plain scalars: `name: y` or `version: 2` into a string field is
/// the string "y" or "2", not a boolean or a number.
fn split_yaml(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    let is_content =
        |d: &str| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && !l.starts_with('%'));
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        let separator = bare == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator || bare == "..." {
            if is_content(&text[start..offset]) {
                docs.push(&text[start..offset]);
            }
            // Content after `--- ` on the same line belongs to the next document.
            start = if separator { offset + 3 } else { offset + line.len() };
        }
        offset += line.len();
    }
    if is_content(&text[start..]) {
        docs.push(&text[start..]);
    }
    docs
}

fn yaml_options() -> serde_saphyr::Options {
    // Generated clusters run to many thousands of objects: raise the
    // parser's size budget, keep its depth and alias limits.
    // YAML 1.2 booleans: `y`, `on`, `yes` stay strings, as kubectl reads
    // them into string fields (untyped readings: Lists, field checks).
    serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_events: usize::MAX,
            max_nodes: usize::MAX,
        },
    }
}

/// Kind and apiVersion of a YAML document, read from its column-0 lines:
/// only top-level keys can start there. `None` sends the document to the
/// full parse (flow style, quoting, anchors): this is a fast path, never the
/// only path. It saves a second parse of every document.
fn scan_head(text: &str) -> Option<(String, String)> {
    let (mut kind, mut api_version) = (None, None);
    for line in text.lines() {
        let (slot, rest) = if let Some(r) = line.strip_prefix("kind:") {
            (&mut kind, r)
        } else if let Some(r) = line.strip_prefix("apiVersion:") {
            (&mut api_version, r)
        } else {
            continue;
        };
        let value = rest.split(" #").next().unwrap_or("").trim();
        let value = value.trim_matches('"').trim_matches('\'');
        if value.is_empty() || value.contains(|c: char| "{}[]&*!|>%@`,\"'".contains(c) || c.is_whitespace()) {
            return None;
        }
        *slot = Some(value.to_string());
    }
    Some((kind?, api_version?))
}

/// The whole document as an untyped value: the slow path for heads the
/// scan cannot read, for `List`s, and for naming objects that fail to parse.
fn as_value(doc: &Doc) -> Result<Value, String> {
    match doc {
        Doc::Json(v) => Ok(v.clone()),
        Doc::Yaml(text) => {
            serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| e.to_string())
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn parse_document(doc: Doc, location: Location, out: &mut Manifests) {
    let head = match &doc {
        Doc::Yaml(text) => scan_head(text),
        Doc::Json(v) => str_at(v, "/kind").map(|k| (k.to_string(), str_at(v, "/apiVersion").unwrap_or("").to_string())),
    };
    let (kind, api_version) = match head {
        Some(h) => h,
        None => match as_value(&doc) {
            Err(reason) => return out.problems.push(Problem::Syntax { file: location.to_string(), reason }),
            // An empty or `null` document is skipped, as kubectl skips it.
            Ok(Value::Null) => return,
            Ok(v) if !v.is_object() => {
                return out
                    .problems
                    .push(Problem::NotAnObject { location, reason: "the document is not a mapping".into() })
            }
            Ok(v) => match str_at(&v, "/kind") {
                None => return out.problems.push(Problem::NotAnObject { location, reason: "no `kind`".into() }),
                Some(k) => (k.to_string(), str_at(&v, "/apiVersion").unwrap_or("").to_string()),
            },
        },
    };
    if kind.ends_with("List") {
        match as_value(&doc) {
            Ok(Value::Object(mut map)) => {
                // client-go writes an empty list's items as `null`.
                let items = match map.remove("items") {
                    Some(Value::Null) => Some(Value::Array(Vec::new())),
                    other => other,
                };
                if let Some(Value::Array(items)) = items {
                    // A typed list (`PodList`, as the API server returns it)
                    // leaves `kind` and `apiVersion` off its items.
                    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
                    for (j, mut item) in items.into_iter().enumerate() {
                        let location = Location { item: Some(j), ..location.clone() };
                        if let (Some(k), Value::Object(fields)) = (item_kind, &mut item) {
                            fields.entry("kind").or_insert_with(|| Value::from(k));
                            fields.entry("apiVersion").or_insert_with(|| Value::from(api_version.as_str()));
                        }
                        parse_document(Doc::Json(item), location, out);
                    }
                    return;
                }
            }
            Ok(_) => {}
            Err(reason) => return out.problems.push(Problem::Syntax { file: location.to_string(), reason }),
        }
    }
    let Some(reader) = READERS.iter().find(|r| r.kind == kind) else {
        *out.skipped.entry(kind).or_default() += 1;
        return;
    };
    let mut ctx = Ctx {
        kind: reader.kind,
        namespaced: reader.namespaced,
        errors: FieldErrors::default(),
        name: String::new(),
        namespace: "default".into(),
        untyped: None,
        finished: false,
    };
    if !reader.api_versions.contains(&api_version.as_str()) {
        ctx.errors.push(
            &FieldPath::root("apiVersion"),
            format!("{api_version:?}: {kind} is read as {}", reader.api_versions.join(" or ")),
        );
    }
    let object = if ctx.errors.is_empty() {
        (reader.read)(doc, &mut ctx)
    } else {
        // A wrong apiVersion: the typed reading would only repeat it.
        ctx.untyped = as_value(&doc).ok();
        None
    };
    if ctx.finished {
        out.finished_pods += 1;
        return;
    }
    if object.is_none() && ctx.name.is_empty() {
        // The object did not parse: name it from the untyped reading if we can.
        if let Some(v) = ctx.untyped.take() {
            ctx.name = str_at(&v, "/metadata/name").unwrap_or("").to_string();
            ctx.namespace = str_at(&v, "/metadata/namespace").unwrap_or("default").to_string();
        }
    }
    let object_ref = ObjectRef {
        kind: kind.clone(),
        namespace: ctx.namespaced.then(|| ctx.namespace.clone()),
        name: ctx.name.clone(),
    };
    match object {
        Some(object) if ctx.errors.is_empty() => out.objects.push(Located { location, object_ref, object }),
        _ => out.problems.push(Problem::Invalid { location, object: object_ref, errors: ctx.errors.0 }),
    }
}
/// What a reader learns about the object besides the object itself.
struct Ctx {
    kind: &'static str,
    namespaced: bool,
    errors: FieldErrors,
    name: String,
    namespace: String,
    /// The untyped reading, kept when the typed one failed.
    untyped: Option<Value>,
    /// A Pod that has finished: left out, not an error.
    finished: bool,
}

impl Ctx {
    /// Records and validates the object's name and namespace; returns the
    /// namespace, defaulted to `default` as the API server does.
    fn identify(&mut self, meta: &meta::ObjectMeta) -> String {
        self.name = meta.name.clone().unwrap_or_default();
        self.namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name_path = FieldPath::root("metadata.name");
        if self.name.is_empty() {
            self.errors.push(&name_path, "required");
        } else if self.kind == "Namespace" {
            self.errors.check(&name_path, names::dns_label(&self.name));
        } else {
            self.errors.check(&name_path, names::dns_subdomain(&self.name));
        }
        if self.namespaced {
            self.errors.check(&FieldPath::root("metadata.namespace"), names::dns_label(&self.namespace));
        }
        self.namespace.clone()
    }
}

struct Reader {
    kind: &'static str,
    api_versions: &'static [&'static str],
    namespaced: bool,
    read: fn(Doc, &mut Ctx) -> Option<Object>,
}

/// Deserializes into a k8s-openapi type; a type error carries its field path.
fn typed<T: DeserializeOwned>(doc: Doc, ctx: &mut Ctx) -> Option<T> {
    let from_value =
        |value: &Value, errors: &mut FieldErrors| match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = e.path().to_string();
                errors
                    .push(&FieldPath::root(if path == "." { "(document)" } else { &path }), e.into_inner().to_string());
                None
            }
        };
    match doc {
        Doc::Json(value) => {
            let t = from_value(&value, &mut ctx.errors);
            if t.is_none() {
                ctx.untyped = Some(value);
            }
            t
        }
        Doc::Yaml(text) => match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
            Ok(t) => Some(t),
            Err(e) => {
                // Find the field path through the untyped reading; fall back
                // to the parser's own message (it has line and column).
                let before = ctx.errors.0.len();
                if let Ok(v) = serde_saphyr::from_str_with_options::<Value>(text, yaml_options()) {
                    from_value(&v, &mut ctx.errors);
                    ctx.untyped = Some(v);
                }
                if ctx.errors.0.len() == before {
                    ctx.errors.push(&FieldPath::root("(document)"), e.to_string());
                }
                None
            }
        },
    }
}

macro_rules! workload {
    ($kind:literal, $ty:ty, $versions:expr, |$w:ident| $template:expr, $path:literal) => {
        Reader {
            kind: $kind,
            api_versions: $versions,
            namespaced: true,
            read: |doc, ctx| {
                let $w: $ty = typed(doc, ctx)?;
                let ns = ctx.identify(&$w.metadata);
                let template = $template;
                Some(Object::Endpoint(endpoint::parse_workload(
                    $kind,
                    &$w.metadata,
                    &ns,
                    template,
                    &FieldPath::root($path),
                    &mut ctx.errors,
                )))
            },
        }
    };
}

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core, networking::v1 as net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

static READERS: &[Reader] = &[
    Reader {
        kind: "Namespace",
        api_versions: &["v1"],
        namespaced: false,
        read: |doc, ctx| {
            let ns: core::Namespace = typed(doc, ctx)?;
            ctx.identify(&ns.metadata);
            Namespace::parse(&ns, &mut ctx.errors).map(Object::Namespace)
        },
    },
    Reader {
        kind: "Pod",
        api_versions: &["v1"],
        namespaced: true,
        read: |doc, ctx| {
            let pod: core::Pod = typed(doc, ctx)?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                ctx.finished = true;
                return None;
            }
            let ns = ctx.identify(&pod.metadata);
            Some(Object::Endpoint(endpoint::parse_pod(&pod, &ns, &mut ctx.errors)))
        },
    },
    Reader {
        kind: "NetworkPolicy",
        api_versions: &["networking.k8s.io/v1"],
        namespaced: true,
        read: |doc, ctx| {
            // Unknown fields fail closed: a typo such as `fromm` would
            // otherwise turn a rule into allow-all (the API server's strict
            // field validation rejects them too).
            if let Ok(value) = as_value(&doc) {
                crate::policy::check_known_fields(&value, &mut ctx.errors);
            }
            let policy: net::NetworkPolicy = typed(doc, ctx)?;
            let ns = ctx.identify(&policy.metadata);
            Some(Object::NetworkPolicy(NetworkPolicy::parse(&policy, &ns, &mut ctx.errors)))
        },
    },
    Reader {
        kind: "Node",
        api_versions: &["v1"],
        namespaced: false,
        read: |doc, ctx| {
            let node: core::Node = typed(doc, ctx)?;
            ctx.identify(&node.metadata);
            Some(Object::Node(Node::parse(&node, &mut ctx.errors)))
        },
    },
    Reader {
        kind: "Service",
        api_versions: &["v1"],
        namespaced: true,
        read: |doc, ctx| {
            let svc: core::Service = typed(doc, ctx)?;
            let ns = ctx.identify(&svc.metadata);
            Some(Object::Service(Service::parse(&svc, &ns)))
        },
    },
    workload!("Deployment", apps::Deployment, &["apps/v1"], |w| w.spec.as_ref().map(|s| &s.template), "spec.template"),
    workload!(
        "StatefulSet",
        apps::StatefulSet,
        &["apps/v1"],
        |w| w.spec.as_ref().map(|s| &s.template),
        "spec.template"
    ),
    workload!("DaemonSet", apps::DaemonSet, &["apps/v1"], |w| w.spec.as_ref().map(|s| &s.template), "spec.template"),
    workload!(
        "ReplicaSet",
        apps::ReplicaSet,
        &["apps/v1"],
        |w| w.spec.as_ref().and_then(|s| s.template.as_ref()),
        "spec.template"
    ),
    workload!(
        "ReplicationController",
        core::ReplicationController,
        &["v1"],
        |w| w.spec.as_ref().and_then(|s| s.template.as_ref()),
        "spec.template"
    ),
    workload!("Job", batch::Job, &["batch/v1"], |w| w.spec.as_ref().map(|s| &s.template), "spec.template"),
    workload!(
        "CronJob",
        batch::CronJob,
        &["batch/v1"],
        |w| w.spec.as_ref().and_then(|s| s.job_template.spec.as_ref()).map(|s| &s.template),
        "spec.jobTemplate.spec.template"
    ),
];
