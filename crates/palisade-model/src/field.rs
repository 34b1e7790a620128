//! Field paths and the errors found at them, collected the way the API
//! server collects them: validation goes on after the first error so one run
//! reports everything wrong with an object.

use std::fmt;

/// A path into an object, rendered like the API server's:
/// `spec.ingress[0].from[1].ipBlock.except[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        FieldPath(name.to_string())
    }

    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        FieldPath(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, k: &str) -> Self {
        FieldPath(format!("{}[{k}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: FieldPath,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Accumulates field errors during one object's validation.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, path: &FieldPath, reason: impl Into<String>) {
        self.0.push(FieldError { path: path.clone(), reason: reason.into() });
    }

    /// Records `check`'s error, if any, at `path`.
    pub fn check(&mut self, path: &FieldPath, check: Result<(), String>) {
        if let Err(reason) = check {
            self.push(path, reason);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
