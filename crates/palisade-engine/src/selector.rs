//! The selector cache: each distinct peer selector (namespace scope + pod
//! selector) maps to the identities it matches, kept up to date as
//! identities appear and disappear and namespace labels change.
//!
//! Policies hold selector ids, not member lists, so a new pod matching a
//! selector changes one bit here and recompiles nothing; the dataplane sees
//! the same change as one set element.

use std::collections::{BTreeSet, HashMap};

use palisade_model::{Labels, NamespaceScope, PeerSelector, Requirement};

use crate::bitset::BitSet;
use crate::identity::{Identities, Identity, IdentityId};
use crate::slots::Slots;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorId(pub u32);

struct Entry {
    selector: PeerSelector,
    members: BitSet,
    refs: u32,
}

/// Namespace labels as the selector cache sees them.
pub trait NamespaceLabels {
    fn labels_of(&self, namespace: &str) -> Option<&Labels>;
    fn all(&self) -> Box<dyn Iterator<Item = (&str, &Labels)> + '_>;
}

#[derive(Default)]
pub struct SelectorCache {
    slots: Slots<Entry>,
    by_value: HashMap<PeerSelector, SelectorId>,
    /// Selectors scoped to one named namespace, by that namespace.
    by_namespace: HashMap<String, BTreeSet<SelectorId>>,
    /// Selectors with a namespaceSelector: any namespace may match.
    cross_namespace: BTreeSet<SelectorId>,
    /// Selectors whose members changed since the last `take_changed`.
    changed: BTreeSet<SelectorId>,
}

/// Does `selector` match `identity` in a namespace with `ns_labels`?
/// Host-network endpoints are never matched: their traffic carries the
/// node's address, not a pod's.
pub fn selector_matches(selector: &PeerSelector, identity: &Identity, ns_labels: Option<&Labels>) -> bool {
    if identity.host_network {
        return false;
    }
    let ns_ok = match &selector.namespaces {
        NamespaceScope::Named(ns) => *ns == identity.namespace,
        NamespaceScope::Matching(sel) => ns_labels.is_some_and(|l| sel.matches(l)),
    };
    ns_ok && selector.pods.matches(&identity.labels)
}

impl SelectorCache {
    /// Takes a reference to a selector, evaluating it if it is new.
    pub fn acquire(
        &mut self,
        selector: &PeerSelector,
        identities: &Identities,
        namespaces: &dyn NamespaceLabels,
    ) -> SelectorId {
        if let Some(&id) = self.by_value.get(selector) {
            self.slots.get_mut(id.0).expect("live selector").refs += 1;
            return id;
        }
        let members = evaluate(selector, identities, namespaces);
        let id = SelectorId(self.slots.insert(Entry { selector: selector.clone(), members, refs: 1 }));
        self.by_value.insert(selector.clone(), id);
        match &selector.namespaces {
            NamespaceScope::Named(ns) => {
                self.by_namespace.entry(ns.clone()).or_default().insert(id);
            }
            NamespaceScope::Matching(_) => {
                self.cross_namespace.insert(id);
            }
        }
        self.changed.insert(id);
        id
    }

    pub fn release(&mut self, id: SelectorId) {
        let entry = self.slots.get_mut(id.0).expect("live selector");
        entry.refs -= 1;
        if entry.refs > 0 {
            return;
        }
        let entry = self.slots.remove(id.0).expect("live selector");
        self.by_value.remove(&entry.selector);
        match &entry.selector.namespaces {
            NamespaceScope::Named(ns) => {
                if let Some(s) = self.by_namespace.get_mut(ns) {
                    s.remove(&id);
                }
            }
            NamespaceScope::Matching(_) => {
                self.cross_namespace.remove(&id);
            }
        }
        self.changed.insert(id);
    }

    #[inline]
    pub fn members(&self, id: SelectorId) -> &BitSet {
        &self.slots.get(id.0).expect("live selector").members
    }

    /// Whether `id` names a selector in use (ids are recycled).
    pub fn is_live(&self, id: SelectorId) -> bool {
        self.slots.get(id.0).is_some()
    }

    pub fn selector(&self, id: SelectorId) -> &PeerSelector {
        &self.slots.get(id.0).expect("live selector").selector
    }

    pub fn contains(&self, id: SelectorId, identity: IdentityId) -> bool {
        self.members(id).contains(identity.0)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SelectorId, &PeerSelector)> {
        self.slots.iter().map(|(i, e)| (SelectorId(i), &e.selector))
    }

    /// A new identity: test it against the selectors that could match it.
    pub fn identity_added(&mut self, id: IdentityId, identity: &Identity, namespaces: &dyn NamespaceLabels) {
        let ns_labels = namespaces.labels_of(&identity.namespace);
        let candidates = self
            .by_namespace
            .get(&identity.namespace)
            .into_iter()
            .flatten()
            .chain(self.cross_namespace.iter())
            .copied()
            .collect::<Vec<_>>();
        for sid in candidates {
            let entry = self.slots.get_mut(sid.0).expect("live selector");
            if selector_matches(&entry.selector, identity, ns_labels) {
                entry.members.insert(id.0);
                self.changed.insert(sid);
            }
        }
    }

    pub fn identity_removed(&mut self, id: IdentityId) {
        for (sid, entry) in self.slots.iter_mut() {
            if entry.members.remove(id.0) {
                self.changed.insert(SelectorId(sid));
            }
        }
    }

    /// A namespace's labels changed: re-test cross-namespace selectors on
    /// the identities in it.
    pub fn namespace_relabeled(&mut self, namespace: &str, identities: &Identities, namespaces: &dyn NamespaceLabels) {
        let Some(in_ns) = identities.by_namespace.get(namespace) else {
            return;
        };
        let ns_labels = namespaces.labels_of(namespace);
        for &sid in &self.cross_namespace {
            let entry = self.slots.get_mut(sid.0).expect("live selector");
            for i in in_ns.iter() {
                let now = selector_matches(&entry.selector, identities.get(IdentityId(i)), ns_labels);
                let changed = if now { entry.members.insert(i) } else { entry.members.remove(i) };
                if changed {
                    self.changed.insert(sid);
                }
            }
        }
    }

    /// Selectors whose member sets changed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<SelectorId> {
        std::mem::take(&mut self.changed)
    }
}

/// Evaluates a new selector. With an `In` requirement it starts from that
/// label's posting list, so the cost follows the matches, not the cluster.
fn evaluate(selector: &PeerSelector, identities: &Identities, namespaces: &dyn NamespaceLabels) -> BitSet {
    let mut members = BitSet::default();
    let candidates: Option<BitSet> = selector
        .pods
        .requirements()
        .iter()
        .filter_map(|r| match r {
            Requirement::In { key, values } => {
                let mut set = BitSet::default();
                for v in values {
                    if let Some(list) = identities.by_label.get(&(key.clone(), v.clone())) {
                        set.extend_from(list);
                    }
                }
                Some(set)
            }
            Requirement::Exists { key } => Some(identities.by_key.get(key).cloned().unwrap_or_default()),
            _ => None,
        })
        .min_by_key(|s| s.len());
    let mut test = |i: u32| {
        let identity = identities.get(IdentityId(i));
        if selector_matches(selector, identity, namespaces.labels_of(&identity.namespace)) {
            members.insert(i);
        }
    };
    match (&candidates, &selector.namespaces) {
        (Some(c), _) => c.iter().for_each(&mut test),
        (None, NamespaceScope::Named(ns)) => {
            if let Some(s) = identities.by_namespace.get(ns) {
                s.iter().for_each(&mut test);
            }
        }
        (None, NamespaceScope::Matching(sel)) => {
            for (ns, labels) in namespaces.all() {
                if sel.matches(labels) {
                    if let Some(s) = identities.by_namespace.get(ns) {
                        s.iter().for_each(&mut test);
                    }
                }
            }
            // Identities in namespaces nobody declared have no labels to match.
        }
    }
    members
}
