//! The CNI protocol (spec 1.1.0): versions, results in every supported
//! version, and errors with the spec's codes. Pure: no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The versions this plugin speaks, oldest first. 0.1.0 and 0.2.0 predate
/// `interfaces` and multiple addresses; nothing current uses them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used when the config gives none we can parse.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Well-known error codes of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    LimitedConnectivity = 51,
    /// Plugin-specific (100+): the pool has no free address.
    PoolExhausted = 100,
    /// Plugin-specific: the node agent did not confirm the pod's policy.
    PolicyNotReady = 101,
    /// Plugin-specific: a kernel or file operation failed.
    Internal = 102,
    /// Plugin-specific: a requested static address is held by another pod.
    AddressInUse = 103,
}

/// An error as the spec prints it on stdout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({ "cniVersion": cni_version, "code": self.code as u32, "msg": self.msg, "details": self.details })
    }
}

/// Parses `x.y.z` for ordering.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let v = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(v)
}

/// Checks that we speak `version`; the spec's code 1 otherwise.
pub fn require_supported(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        "incompatible CNI versions",
        format!("config is {version:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
    ))
}

/// Whether `version` is at least `min` (both well-formed).
pub fn at_least(version: &str, min: &str) -> bool {
    matches!((parse_version(version), parse_version(min)), (Some(a), Some(b)) if a >= b)
}

/// The VERSION command's answer.
pub fn version_info(cni_version: &str) -> Value {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The container's netns path for container interfaces; empty on the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length (`10.0.0.5/24`).
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A result in the 1.x shape; [`CniResult::to_version`] renders it in any
/// supported version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub dns: Value,
}

impl CniResult {
    /// The result as the spec's JSON for `version`: 0.3.x and 0.4.0 add a
    /// `version` ("4" or "6") to each address; 1.x does not.
    pub fn to_version(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).expect("results serialize");
        v["cniVersion"] = json!(version);
        if !at_least(version, "1.0.0") {
            for ip in v["ips"].as_array_mut().into_iter().flatten() {
                let family = if ip["address"].as_str().is_some_and(|a| a.contains(':')) { "6" } else { "4" };
                ip["version"] = json!(family);
            }
        }
        v
    }

    /// Reads a `prevResult` of any supported version (the `version` field
    /// of old results is ignored).
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(value.clone())
            .map_err(|e| CniError::new(Code::Decode, "cannot decode prevResult", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "cali1".into(), mac: "aa:bb:cc:dd:ee:ff".into(), sandbox: String::new() },
                Interface { name: "eth0".into(), mac: String::new(), sandbox: "/run/netns/p".into() },
            ],
            ips: vec![
                IpConfig { address: "10.0.0.5/32".parse().unwrap(), gateway: None, interface: Some(1) },
                IpConfig { address: "fd00::5/128".parse().unwrap(), gateway: None, interface: Some(1) },
            ],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("169.254.1.1".parse().unwrap()) }],
            dns: Value::Null,
        }
    }

    #[test]
    fn old_versions_name_the_address_family() {
        let v = result().to_version("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let v = result().to_version("1.1.0");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/p");
        // Round trip through an old version.
        assert_eq!(CniResult::from_json(&result().to_version("0.3.1")).unwrap(), result());
    }

    #[test]
    fn versions_are_checked_and_ordered() {
        assert!(require_supported("1.0.0").is_ok());
        assert_eq!(require_supported("0.2.0").unwrap_err().code, Code::IncompatibleVersion);
        assert_eq!(require_supported("2.0.0").unwrap_err().code, Code::IncompatibleVersion);
        assert!(at_least("1.1.0", "1.0.0") && at_least("0.4.0", "0.4.0") && !at_least("0.3.1", "0.4.0"));
        assert_eq!(parse_version("1.x.0"), None);
        assert_eq!(version_info("1.0.0")["supportedVersions"][4], "1.1.0");
    }
}
