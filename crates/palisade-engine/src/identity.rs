//! Identities: endpoints with the same namespace, labels, container ports and
//! host-network flag behave identically under policy, so they share one
//! identity and are compiled once. A thousand replicas cost one compile.

use std::collections::HashMap;
use std::sync::Arc;

use palisade_model::{ContainerPort, Labels};

use crate::bitset::BitSet;
use crate::slots::Slots;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId(pub u32);

/// What policy can see of an endpoint. Ports are part of it because named
/// ports resolve against the destination's container ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub namespace: String,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
}

impl Identity {
    /// The port numbers a named port resolves to on this identity, per
    /// protocol. One pod declares a name once (the API server insists), but
    /// the merged replicas of a workload may disagree: then every number
    /// counts, so reachability is over-approximated, never hidden.
    pub fn named_ports<'a>(
        &'a self,
        name: &'a str,
        protocol: palisade_model::Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        self.ports.iter().filter(move |p| p.protocol == protocol && p.name.as_deref() == Some(name)).map(|p| p.port)
    }

    pub fn has_named_port(&self, name: &str, protocol: palisade_model::Protocol, port: u16) -> bool {
        self.named_ports(name, protocol).any(|p| p == port)
    }
}

struct Slot {
    identity: Arc<Identity>,
    refs: u32,
}

/// Interned identities with reference counts and the indexes the selector
/// cache evaluates against: by namespace and by label.
#[derive(Default)]
pub struct Identities {
    slots: Slots<Slot>,
    by_value: HashMap<Arc<Identity>, IdentityId>,
    pub(crate) by_namespace: HashMap<String, BitSet>,
    /// `(key, value)` -> identities with that label: the posting lists that
    /// make evaluating an `In` selector proportional to its matches.
    pub(crate) by_label: HashMap<(String, String), BitSet>,
    /// `key` -> identities having the key at all.
    pub(crate) by_key: HashMap<String, BitSet>,
}

impl Identities {
    /// Takes a reference; returns the id and whether the identity is new.
    pub fn acquire(&mut self, identity: Identity) -> (IdentityId, bool) {
        if let Some(&id) = self.by_value.get(&identity) {
            self.slots.get_mut(id.0).expect("interned identity has a slot").refs += 1;
            return (id, false);
        }
        let identity = Arc::new(identity);
        let id = IdentityId(self.slots.insert(Slot { identity: identity.clone(), refs: 1 }));
        self.by_namespace.entry(identity.namespace.clone()).or_default().insert(id.0);
        for (k, v) in &identity.labels {
            self.by_label.entry((k.clone(), v.clone())).or_default().insert(id.0);
            self.by_key.entry(k.clone()).or_default().insert(id.0);
        }
        self.by_value.insert(identity, id);
        (id, true)
    }

    /// Drops a reference; returns true when the identity is gone.
    pub fn release(&mut self, id: IdentityId) -> bool {
        let slot = self.slots.get_mut(id.0).expect("released identity has a slot");
        slot.refs -= 1;
        if slot.refs > 0 {
            return false;
        }
        let slot = self.slots.remove(id.0).expect("slot exists");
        let identity = slot.identity;
        self.by_value.remove(&identity);
        if let Some(s) = self.by_namespace.get_mut(&identity.namespace) {
            s.remove(id.0);
        }
        for (k, v) in &identity.labels {
            if let Some(s) = self.by_label.get_mut(&(k.clone(), v.clone())) {
                s.remove(id.0);
            }
            if let Some(s) = self.by_key.get_mut(k) {
                s.remove(id.0);
            }
        }
        true
    }

    #[inline]
    pub fn get(&self, id: IdentityId) -> &Identity {
        &self.slots.get(id.0).expect("live identity").identity
    }

    /// A shared handle: stays valid after the identity is released, so a
    /// consumer can remember what an endpoint's old identity was.
    pub fn shared(&self, id: IdentityId) -> Arc<Identity> {
        self.slots.get(id.0).expect("live identity").identity.clone()
    }

    pub fn iter(&self) -> impl Iterator<Item = (IdentityId, &Identity)> {
        self.slots.iter().map(|(i, s)| (IdentityId(i), &*s.identity))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}
