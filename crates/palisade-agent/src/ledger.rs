//! Turns what a source reads, object by object, into the updates the node
//! takes: readable objects as they are, unreadable ones as their stand-ins
//! (`palisade_model::stand_in`: one bad object affects only what it could
//! have affected, and there fails closed). Both sources use it, so the same
//! objects give the same node state through either.

use std::collections::{BTreeMap, HashMap};

use palisade_model::load::{Located, Object};
use palisade_model::stand_in::stand_ins;
use palisade_model::ObjectRef;

/// One object as the source reads it now.
pub enum Reading<'a> {
    Absent,
    Readable(&'a Located),
    Unreadable(&'a str),
}

/// Which stand-ins are in the node's state, and why.
#[derive(Default)]
pub struct Ledger {
    /// Stand-ins under a reference of their own (a namespace's isolating
    /// policy), by the unreadable object they stand for.
    extras: HashMap<ObjectRef, Vec<ObjectRef>>,
    unreadable: BTreeMap<ObjectRef, String>,
}

impl Ledger {
    /// Every object that cannot be read now, with why.
    pub fn unreadable(&self) -> &BTreeMap<ObjectRef, String> {
        &self.unreadable
    }

    /// `object` now reads as `reading`: what the node must upsert and
    /// delete. Call it once per object per update (an object both upserted
    /// and deleted in one update would be read as upserted).
    pub fn change(
        &mut self,
        object: &ObjectRef,
        reading: Reading,
        upserts: &mut Vec<Object>,
        deletes: &mut Vec<ObjectRef>,
    ) {
        let before = self.extras.remove(object).unwrap_or_default();
        let mut extras = Vec::new();
        match reading {
            Reading::Absent => {
                self.unreadable.remove(object);
                deletes.push(object.clone());
            }
            Reading::Readable(located) => {
                self.unreadable.remove(object);
                upserts.push(located.object.clone());
            }
            Reading::Unreadable(why) => {
                self.unreadable.insert(object.clone(), why.to_string());
                let stand_ins = stand_ins(object);
                if !stand_ins.iter().any(|s| s.object_ref == *object) {
                    deletes.push(object.clone());
                }
                for s in stand_ins {
                    if s.object_ref != *object {
                        extras.push(s.object_ref);
                    }
                    upserts.push(s.object);
                }
            }
        }
        deletes.extend(before.into_iter().filter(|r| !extras.contains(r)));
        if !extras.is_empty() {
            self.extras.insert(object.clone(), extras);
        }
    }

    /// A whole state from every object's reading: the objects to assemble
    /// a cluster from.
    pub fn full<'a>(&mut self, readings: impl IntoIterator<Item = (&'a ObjectRef, Reading<'a>)>) -> Vec<Located> {
        self.extras.clear();
        self.unreadable.clear();
        let mut out = Vec::new();
        for (object, reading) in readings {
            match reading {
                Reading::Absent => {}
                Reading::Readable(located) => out.push(located.clone()),
                Reading::Unreadable(why) => {
                    self.unreadable.insert(object.clone(), why.to_string());
                    let stand_ins = stand_ins(object);
                    let extras: Vec<ObjectRef> =
                        stand_ins.iter().map(|s| s.object_ref.clone()).filter(|r| r != object).collect();
                    if !extras.is_empty() {
                        self.extras.insert(object.clone(), extras);
                    }
                    out.extend(stand_ins);
                }
            }
        }
        out
    }
}
