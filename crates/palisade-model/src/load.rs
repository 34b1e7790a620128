//! Reading manifests: files, directories (recursive), stdin; multi-document
//! YAML, JSON, and `List` kinds. Every object keeps where it came from so an
//! error can name the file, the document and the object.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::endpoint::{self, Endpoint};
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
    Invalid {
        location: Location,
        object: ObjectRef,
        errors: Vec<FieldError>,
    },
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
                Ok(_) => sources.push(Source {
                    name: "-".into(),
                    text,
                }),
                Err(e) => problems.push(Problem::Read {
                    file: "-".into(),
                    reason: e.to_string(),
                }),
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
        Err(e) => {
            return problems.push(Problem::Read {
                file: name,
                reason: e.to_string(),
            })
        }
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                return problems.push(Problem::Read {
                    file: name,
                    reason: e.to_string(),
                })
            }
        };
        entries.sort();
        for entry in entries {
            collect(&entry, false, sources, problems);
        }
        return;
    }
    let wanted = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    );
    if !explicit && !wanted {
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => sources.push(Source { name, text }),
        Err(e) => problems.push(Problem::Read {
            file: name,
            reason: e.to_string(),
        }),
    }
}

/// Parses sources into objects. Never fails as a whole: every unusable
/// document or object becomes a [`Problem`] and parsing goes on.
pub fn parse_sources(sources: &[Source]) -> Manifests {
    let mut out = Manifests::default();
    for source in sources {
        match documents(source) {
            Err(reason) => out.problems.push(Problem::Syntax {
                file: source.name.clone(),
                reason,
            }),
            Ok(docs) => {
                for (i, doc) in docs.into_iter().enumerate() {
                    let location = Location {
                        file: source.name.clone(),
                        document: i + 1,
                        item: None,
                    };
                    parse_document(doc, location, &mut out);
                }
            }
        }
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
    Ok(split_yaml(&source.text)
        .into_iter()
        .map(Doc::Yaml)
        .collect())
}

/// Splits a YAML stream at `---` and `...` lines. Each document is then
/// deserialized straight into its Kubernetes type, which keeps kubectl's
/// reading of plain scalars: `name: y` or `version: 2` into a string field is
/// the string "y" or "2", not a boolean or a number.
fn split_yaml(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    let is_content = |d: &str| {
        d.lines().any(|l| {
            !l.trim().is_empty() && !l.trim_start().starts_with('#') && !l.starts_with('%')
        })
    };
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        let separator = bare == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator || bare == "..." {
            if is_content(&text[start..offset]) {
                docs.push(&text[start..offset]);
            }
            // Content after `--- ` on the same line belongs to the next document.
            start = if separator {
                offset + 3
            } else {
                offset + line.len()
            };
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
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_events: usize::MAX,
            max_nodes: usize::MAX,
        },
    }
}

/// What dispatch needs: kind, apiVersion, name, namespace, and List items.
#[derive(serde::Deserialize, Default)]
struct Head {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMeta>,
}

#[derive(serde::Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

fn head(doc: &Doc) -> Result<Head, String> {
    match doc {
        Doc::Json(v) => {
            if !v.is_object() {
                return Err("the document is not a mapping".into());
            }
            Ok(Head {
                api_version: v
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .map(String::from),
                kind: v.get("kind").and_then(Value::as_str).map(String::from),
                metadata: Some(HeadMeta {
                    name: v
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(String::from),
                    namespace: v
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(String::from),
                }),
            })
        }
        Doc::Yaml(text) => serde_saphyr::from_str_with_options::<Head>(text, yaml_options())
            .map_err(|e| e.to_string()),
    }
}

fn parse_document(doc: Doc, location: Location, out: &mut Manifests) {
    let head = match head(&doc) {
        Ok(h) => h,
        Err(reason) => {
            let problem = match doc {
                Doc::Yaml(_) => Problem::Syntax {
                    file: location.to_string(),
                    reason,
                },
                Doc::Json(_) => Problem::NotAnObject { location, reason },
            };
            return out.problems.push(problem);
        }
    };
    let Some(kind) = head.kind.clone() else {
        return out.problems.push(Problem::NotAnObject {
            location,
            reason: "no `kind`".into(),
        });
    };
    if kind.ends_with("List") {
        let value = match &doc {
            Doc::Json(v) => Ok(v.clone()),
            Doc::Yaml(text) => serde_saphyr::from_str_with_options::<Value>(text, yaml_options())
                .map_err(|e| e.to_string()),
        };
        match value {
            Ok(Value::Object(mut map)) => {
                if let Some(Value::Array(items)) = map.remove("items") {
                    for (j, item) in items.into_iter().enumerate() {
                        let location = Location {
                            item: Some(j),
                            ..location.clone()
                        };
                        parse_document(Doc::Json(item), location, out);
                    }
                    return;
                }
            }
            Ok(_) => {}
            Err(reason) => {
                return out.problems.push(Problem::Syntax {
                    file: location.to_string(),
                    reason,
                })
            }
        }
    }
    let api_version = head.api_version.unwrap_or_default();
    let Some(reader) = READERS.iter().find(|r| r.kind == kind) else {
        *out.skipped.entry(kind).or_default() += 1;
        return;
    };
    let namespaced = reader.namespaced;
    let meta = head.metadata.unwrap_or_default();
    let name = meta.name.unwrap_or_default();
    let namespace = meta.namespace.unwrap_or_else(|| "default".into());
    let object_ref = ObjectRef {
        kind: kind.clone(),
        namespace: namespaced.then(|| namespace.clone()),
        name: name.clone(),
    };
    let mut errors = FieldErrors::default();
    if !reader.api_versions.contains(&api_version.as_str()) {
        errors.push(
            &FieldPath::root("apiVersion"),
            format!(
                "{api_version:?}: {kind} is read as {}",
                reader.api_versions.join(" or ")
            ),
        );
    }
    if name.is_empty() {
        errors.push(&FieldPath::root("metadata.name"), "required");
    } else if kind == "Namespace" {
        errors.check(&FieldPath::root("metadata.name"), names::dns_label(&name));
    } else {
        errors.check(
            &FieldPath::root("metadata.name"),
            names::dns_subdomain(&name),
        );
    }
    if namespaced {
        errors.check(
            &FieldPath::root("metadata.namespace"),
            names::dns_label(&namespace),
        );
    }
    let object = if errors.is_empty() {
        (reader.read)(doc, &namespace, &mut errors)
    } else {
        None
    };
    match object {
        Some(object) if errors.is_empty() => out.objects.push(Located {
            location,
            object_ref,
            object,
        }),
        _ => out.problems.push(Problem::Invalid {
            location,
            object: object_ref,
            errors: errors.0,
        }),
    }
}

struct Reader {
    kind: &'static str,
    api_versions: &'static [&'static str],
    namespaced: bool,
    read: fn(Doc, &str, &mut FieldErrors) -> Option<Object>,
}

/// Deserializes into a k8s-openapi type; a type error carries its field path.
fn typed<T: DeserializeOwned>(doc: Doc, errors: &mut FieldErrors) -> Option<T> {
    let from_value =
        |value: Value, errors: &mut FieldErrors| match serde_path_to_error::deserialize::<_, T>(
            value,
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = e.path().to_string();
                errors.push(
                    &FieldPath::root(if path == "." { "" } else { &path }),
                    e.into_inner().to_string(),
                );
                None
            }
        };
    match doc {
        Doc::Json(value) => from_value(value, errors),
        Doc::Yaml(text) => match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
            Ok(t) => Some(t),
            Err(e) => {
                // Find the field path through the untyped reading; fall back
                // to the parser's own message (it has line and column).
                let before = errors.0.len();
                if let Ok(v) = serde_saphyr::from_str_with_options::<Value>(text, yaml_options()) {
                    from_value(v, errors);
                }
                if errors.0.len() == before {
                    errors.push(&FieldPath::root("(document)"), e.to_string());
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
            read: |doc, ns, errors| {
                let $w: $ty = typed(doc, errors)?;
                let template = $template;
                Some(Object::Endpoint(endpoint::parse_workload(
                    $kind,
                    &$w.metadata,
                    ns,
                    template,
                    &FieldPath::root($path),
                    errors,
                )))
            },
        }
    };
}

use k8s_openapi::api::{
    apps::v1 as apps, batch::v1 as batch, core::v1 as core, networking::v1 as net,
};

static READERS: &[Reader] = &[
    Reader {
        kind: "Namespace",
        api_versions: &["v1"],
        namespaced: false,
        read: |doc, _, errors| {
            Namespace::parse(&typed::<core::Namespace>(doc, errors)?, errors).map(Object::Namespace)
        },
    },
    Reader {
        kind: "Pod",
        api_versions: &["v1"],
        namespaced: true,
        read: |doc, ns, errors| {
            Some(Object::Endpoint(endpoint::parse_pod(
                &typed::<core::Pod>(doc, errors)?,
                ns,
                errors,
            )))
        },
    },
    Reader {
        kind: "NetworkPolicy",
        api_versions: &["networking.k8s.io/v1"],
        namespaced: true,
        read: |doc, ns, errors| {
            Some(Object::NetworkPolicy(NetworkPolicy::parse(
                &typed::<net::NetworkPolicy>(doc, errors)?,
                ns,
                errors,
            )))
        },
    },
    Reader {
        kind: "Node",
        api_versions: &["v1"],
        namespaced: false,
        read: |doc, _, errors| {
            Some(Object::Node(Node::parse(
                &typed::<core::Node>(doc, errors)?,
                errors,
            )))
        },
    },
    Reader {
        kind: "Service",
        api_versions: &["v1"],
        namespaced: true,
        read: |doc, ns, errors| {
            Some(Object::Service(Service::parse(
                &typed::<core::Service>(doc, errors)?,
                ns,
            )))
        },
    },
    workload!(
        "Deployment",
        apps::Deployment,
        &["apps/v1"],
        |w| w.spec.as_ref().map(|s| &s.template),
        "spec.template"
    ),
    workload!(
        "StatefulSet",
        apps::StatefulSet,
        &["apps/v1"],
        |w| w.spec.as_ref().map(|s| &s.template),
        "spec.template"
    ),
    workload!(
        "DaemonSet",
        apps::DaemonSet,
        &["apps/v1"],
        |w| w.spec.as_ref().map(|s| &s.template),
        "spec.template"
    ),
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
    workload!(
        "Job",
        batch::Job,
        &["batch/v1"],
        |w| w.spec.as_ref().map(|s| &s.template),
        "spec.template"
    ),
    workload!(
        "CronJob",
        batch::CronJob,
        &["batch/v1"],
        |w| w
            .spec
            .as_ref()
            .and_then(|s| s.job_template.spec.as_ref())
            .map(|s| &s.template),
        "spec.jobTemplate.spec.template"
    ),
];
