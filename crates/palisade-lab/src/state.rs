//! The state file of a lab started with `palisade lab up`, so later
//! commands (apply, probe, exec, down) find it: its plan, the process that
//! serves it, and the manifests its kernels currently enforce.

use std::path::PathBuf;

use palisade_model::Protocol;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

pub const STATE_DIR: &str = "/run/palisade/labs";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// The `palisade lab serve` process; its pid is the run id.
    pub pid: u32,
    pub plan: Plan,
    /// The manifests last applied.
    pub paths: Vec<PathBuf>,
    pub skip_invalid: bool,
    /// What every pod serves.
    pub served: Vec<(Protocol, u16)>,
    /// `drop` or `reject`.
    pub deny: String,
    /// Established flows a change forbids are kept (else ended).
    #[serde(default)]
    pub keep_established: bool,
    /// The lab runs palisade agents (else it programs the kernels itself).
    #[serde(default)]
    pub agents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab named {0:?} is up (start one with palisade lab up -f PATH)")]
    NotUp(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lab state file: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{name}.json"))
}

pub fn log_path(name: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{name}.log"))
}

impl LabState {
    pub fn load(name: &str) -> Result<LabState, StateError> {
        let path = path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotUp(name.into())),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Written to a temporary file and renamed: readers never see half a state.
    pub fn save(&self) -> Result<(), StateError> {
        let path = path(&self.name);
        let io = |source| StateError::Io { path: path.clone(), source };
        std::fs::create_dir_all(STATE_DIR).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("state serializes")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    pub fn remove(name: &str) {
        let _ = std::fs::remove_file(path(name));
    }
}
