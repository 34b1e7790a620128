//! Labels and label selectors, validated once at the edge and matched fast.
//!
//! A selector is kept as a list of requirements (matchLabels become `In` with
//! one value), the form the API server's `LabelSelectorAsSelector` produces,
//! so there is one matching procedure for both halves of the API type.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde::Serialize;

use crate::field::{FieldErrors, FieldPath};
use crate::names;

/// Labels of an object. Ordered so identical label sets compare and hash alike.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "operator", rename_all = "PascalCase")]
pub enum Requirement {
    In { key: String, values: BTreeSet<String> },
    NotIn { key: String, values: BTreeSet<String> },
    Exists { key: String },
    DoesNotExist { key: String },
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::In { key, .. }
            | Requirement::NotIn { key, .. }
            | Requirement::Exists { key }
            | Requirement::DoesNotExist { key } => key,
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            // NotIn matches objects without the key, as upstream does.
            Requirement::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Builds a selector from requirements; sorted and deduplicated so equal
    /// selectors written differently share one selector-cache entry.
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort();
        requirements.dedup();
        LabelSelector { requirements }
    }

    /// `matchLabels` only.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_requirements(
            labels
                .into_iter()
                .map(|(k, v)| Requirement::In { key: k.to_string(), values: BTreeSet::from([v.to_string()]) })
                .collect(),
        )
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Validates an API label selector; `path` names the selector field.
    pub fn parse(selector: &meta::LabelSelector, path: &FieldPath, errors: &mut FieldErrors) -> Self {
        let mut requirements = Vec::new();
        if let Some(labels) = &selector.match_labels {
            let path = path.child("matchLabels");
            for (key, value) in labels {
                errors.check(&path, names::qualified_name(key));
                errors.check(&path.key(key), names::label_value(value));
                requirements.push(Requirement::In { key: key.clone(), values: BTreeSet::from([value.clone()]) });
            }
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let path = path.child("matchExpressions").index(i);
            errors.check(&path.child("key"), names::qualified_name(&expr.key));
            let values = expr.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                errors.check(&path.child("values").index(j), names::label_value(v));
            }
            let key = expr.key.clone();
            let set: BTreeSet<String> = values.iter().cloned().collect();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        errors.push(&path.child("values"), "must be specified when `operator` is 'In' or 'NotIn'");
                    }
                    if expr.operator == "In" {
                        Requirement::In { key, values: set }
                    } else {
                        Requirement::NotIn { key, values: set }
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        errors.push(
                            &path.child("values"),
                            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                        );
                    }
                    if expr.operator == "Exists" {
                        Requirement::Exists { key }
                    } else {
                        Requirement::DoesNotExist { key }
                    }
                }
                other => {
                    errors.push(
                        &path.child("operator"),
                        format!("{other:?}: not a valid selector operator (In, NotIn, Exists, DoesNotExist)"),
                    );
                    continue;
                }
            };
            requirements.push(requirement);
        }
        Self::from_requirements(requirements)
    }
}

impl fmt::Display for LabelSelector {
    /// kubectl's selector syntax: `app=web,tier in (a,b),!legacy`; `{}` for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let join = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In { key, values } if values.len() == 1 => write!(f, "{key}={}", join(values))?,
                Requirement::In { key, values } => write!(f, "{key} in ({})", join(values))?,
                Requirement::NotIn { key, values } => write!(f, "{key} notin ({})", join(values))?,
                Requirement::Exists { key } => write!(f, "{key}")?,
                Requirement::DoesNotExist { key } => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(json: serde_json::Value) -> (LabelSelector, Vec<String>) {
        let sel: meta::LabelSelector = serde_json::from_value(json).unwrap();
        let mut errors = FieldErrors::default();
        let s = LabelSelector::parse(&sel, &FieldPath::root("spec.podSelector"), &mut errors);
        (s, errors.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn operators_match_like_upstream() {
        let (s, e) = parse(serde_json::json!({"matchExpressions": [
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
            {"key": "app", "operator": "Exists"},
        ]}));
        assert!(e.is_empty());
        assert!(s.matches(&labels(&[("app", "x")])));
        assert!(s.matches(&labels(&[("app", "x"), ("tier", "web")])));
        assert!(!s.matches(&labels(&[("app", "x"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("tier", "web")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        let (s, e) = parse(serde_json::json!({}));
        assert!(e.is_empty());
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn equal_selectors_written_differently_are_equal() {
        let (a, _) = parse(serde_json::json!({"matchLabels": {"a": "1", "b": "2"}}));
        let (b, _) = parse(serde_json::json!({"matchExpressions": [
            {"key": "b", "operator": "In", "values": ["2"]},
            {"key": "a", "operator": "In", "values": ["1"]}]}));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=1,b=2");
    }

    #[test]
    fn value_rules_are_enforced() {
        let (_, e) = parse(serde_json::json!({"matchExpressions": [
            {"key": "a", "operator": "In", "values": []},
            {"key": "b", "operator": "Exists", "values": ["x"]},
            {"key": "c", "operator": "Equals", "values": ["x"]},
            {"key": "bad key", "operator": "Exists"}]}));
        assert_eq!(
            e,
            vec![
                "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.podSelector.matchExpressions[1].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                "spec.podSelector.matchExpressions[2].operator: \"Equals\": not a valid selector operator (In, NotIn, Exists, DoesNotExist)",
                "spec.podSelector.matchExpressions[3].key: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ]
        );
    }
}
