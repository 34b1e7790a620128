//! The churn tests' world and judge, shared by the lab's own churn test
//! (direct wiring) and the one through agents and the CNI plugin.
//!
//! A probe that runs while changes land may meet the state before or after
//! each of them, so a connection is a violation only if no state in its
//! window allowed the source's egress, or none allowed the destination's
//! ingress.

use palisade_engine::{Engine, Flow, FlowEnd};
use palisade_model::{EndpointKey, Protocol};

/// xorshift64: tiny and deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Pod slots p0.. in namespace `x` (present or not), each with a `role`
/// label, and up to `policies.len()` policies.
pub struct World {
    pub present: Vec<bool>,
    pub roles: Vec<usize>,
    pub policies: Vec<Option<String>>,
}

impl World {
    /// `pods` present pods (of `slots`), roles cycling r0-r2, no policy.
    pub fn new(slots: usize, pods: usize, policies: usize) -> World {
        World {
            present: (0..slots).map(|i| i < pods).collect(),
            roles: (0..slots).map(|i| i % 3).collect(),
            policies: vec![None; policies],
        }
    }

    pub fn manifests(&self) -> String {
        let mut s = String::new();
        for (i, role) in self.roles.iter().enumerate().filter(|(i, _)| self.present[*i]) {
            s += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: p{i}, role: r{role}}}}}\nspec: {{containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\n"
            );
        }
        for p in self.policies.iter().flatten() {
            s += p;
        }
        s
    }

    /// Policy `k`: a random role's pods, isolated for ingress, egress or
    /// both, with a random peer and port (or none allowed).
    pub fn random_policy(&self, rng: &mut Rng, k: usize) -> String {
        let slots = self.roles.len();
        let types = ["[Ingress]", "[Egress]", "[Ingress, Egress]"][rng.below(3)];
        let peer = |rng: &mut Rng| match rng.below(3) {
            0 => format!("{{podSelector: {{matchLabels: {{role: r{}}}}}}}", rng.below(3)),
            1 => format!("{{podSelector: {{matchLabels: {{app: p{}}}}}}}", rng.below(slots)),
            _ => "{namespaceSelector: {}}".to_string(),
        };
        let ports = ["", ", ports: [{port: 80}]", ", ports: [{port: 81}]"][rng.below(3)];
        let ingress = if rng.below(4) == 0 { "[]".to_string() } else { format!("[{{from: [{}]{ports}}}]", peer(rng)) };
        let egress = if rng.below(4) == 0 { "[]".to_string() } else { format!("[{{to: [{}]{ports}}}]", peer(rng)) };
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{role: r{}}}}}\n  policyTypes: {types}\n  ingress: {ingress}\n  egress: {egress}\n",
            rng.below(3)
        )
    }

    /// One random change: a relabel, a policy set or removed, and (with
    /// `pods`) a pod added or removed (at least three stay). Returns its kind.
    pub fn change(&mut self, rng: &mut Rng, pods: bool) -> &'static str {
        match rng.below(if pods { 5 } else { 3 }) {
            0 => {
                let i = rng.below(self.roles.len());
                self.roles[i] = rng.below(3);
                "relabel"
            }
            1 => {
                let k = rng.below(self.policies.len());
                self.policies[k] = Some(self.random_policy(rng, k));
                "policy"
            }
            2 => {
                let k = rng.below(self.policies.len());
                self.policies[k] = None;
                "policy removed"
            }
            _ => {
                let i = rng.below(self.present.len());
                if self.present[i] && self.present.iter().filter(|p| **p).count() <= 3 {
                    return "none";
                }
                self.present[i] = !self.present[i];
                if self.present[i] {
                    "pod added"
                } else {
                    "pod removed"
                }
            }
        }
    }
}

/// One probe: between which pods, the changes fully applied when it
/// started and when it ended, and whether it connected (to the right pod).
pub struct Seen {
    pub src: EndpointKey,
    pub dst: EndpointKey,
    pub from: usize,
    pub to: usize,
    pub connected: bool,
}

/// (egress allowed, ingress allowed) of src -> dst tcp/80; a pod that
/// does not exist in that state allows nothing.
pub fn sides(engine: &Engine, src: &EndpointKey, dst: &EndpointKey) -> (bool, bool) {
    let (Some(s), Some(d)) = (engine.endpoint_id(src), engine.endpoint_id(dst)) else { return (false, false) };
    let v = engine.verdict(&Flow {
        src: FlowEnd::Endpoint(s),
        dst: FlowEnd::Endpoint(d),
        protocol: Protocol::Tcp,
        port: 80,
    });
    (v.egress.allows(), v.ingress.allows())
}

/// Judges every probe against the engines of states 0..=changes: the
/// violations (connected although forbidden throughout), and how many
/// probes were refused although every state in their window allowed them.
pub fn judge(seen: &[Seen], engines: &[Engine]) -> (Vec<String>, usize) {
    let last = engines.len() - 1;
    let mut violations = Vec::new();
    let mut wrongly_denied = 0;
    for s in seen {
        let window = s.from..=(s.to + 1).min(last);
        let verdicts: Vec<(bool, bool)> = window.clone().map(|i| sides(&engines[i], &s.src, &s.dst)).collect();
        if s.connected {
            if !(verdicts.iter().any(|v| v.0) && verdicts.iter().any(|v| v.1)) {
                violations.push(format!("{} -> {} connected during changes {window:?}: {verdicts:?}", s.src, s.dst));
            }
        } else if s.from == s.to && verdicts.iter().all(|v| v.0 && v.1) {
            wrongly_denied += 1;
        }
    }
    (violations, wrongly_denied)
}
