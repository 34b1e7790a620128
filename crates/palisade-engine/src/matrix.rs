//! The connectivity matrix of a whole cluster.
//!
//! Endpoints that no policy can tell apart (same identity, inside the same
//! ipBlocks, and for host-network special cases the same node) form one
//! class; the matrix is computed once per pair of classes. A cluster of
//! 10,000 pods in 1,000 workloads costs a million cells, not a hundred million.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::Arc;

use palisade_model::{Direction, IpBlock};

use crate::bitset::BitSet;
use crate::connset::ConnSet;
use crate::engine::PeerMatch;
use crate::engine::{EndpointId, Engine};
use crate::external::{external_ranges, ExternalRange};
use crate::identity::IdentityId;
use crate::verdict::FlowEnd;

pub struct Matrix {
    /// All endpoints, sorted by key: the order of rows in every output.
    /// Indexes past them are the outside world's ranges (`externals`).
    pub endpoints: Vec<EndpointId>,
    /// Addresses outside the cluster, cut by every ipBlock into ranges no
    /// policy can tell apart: index `endpoints.len() + k` is `externals[k]`.
    pub externals: Vec<ExternalRange>,
    class_of: Vec<u32>,
    /// Endpoint indexes (into `endpoints`) of each class.
    pub classes: Vec<Vec<usize>>,
    cells: Cells,
    conns: Vec<ConnSet>,
}

#[derive(Hash, PartialEq, Eq)]
struct ClassKey {
    identity: IdentityId,
    blocks: Vec<u32>,
    node: Option<String>,
}

impl Matrix {
    pub fn compute(engine: &Engine) -> Matrix {
        Matrix::compute_cut_by(engine, engine.ip_blocks())
    }

    /// The matrix with the outside world cut by `blocks`, which must hold
    /// every ipBlock of the engine's policies (more cut finer): two states
    /// cut by the union of their blocks have the same outside ranges, so
    /// `diff` can compare them.
    pub fn compute_cut_by(engine: &Engine, blocks: Vec<Arc<IpBlock>>) -> Matrix {
        let mut endpoints: Vec<EndpointId> = engine.endpoints().map(|(id, _)| id).collect();
        endpoints.sort_by(|a, b| engine.endpoint(*a).key.cmp(&engine.endpoint(*b).key));
        let node_matters = engine.endpoints().any(|(_, e)| e.host_network);
        let mut class_ids: HashMap<ClassKey, u32> = HashMap::new();
        let mut classes: Vec<Vec<usize>> = Vec::new();
        let mut class_of = Vec::with_capacity(endpoints.len());
        for (i, &id) in endpoints.iter().enumerate() {
            let ep = engine.endpoint(id);
            let key = ClassKey {
                identity: engine.endpoint_identity(id),
                blocks: blocks
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| ep.ips.iter().any(|ip| b.contains(*ip)))
                    .map(|(j, _)| j as u32)
                    .collect(),
                node: if node_matters { ep.node.clone() } else { None },
            };
            let next = classes.len() as u32;
            let c = *class_ids.entry(key).or_insert(next);
            if c == next {
                classes.push(Vec::new());
            }
            classes[c as usize].push(i);
            class_of.push(c);
        }
        let endpoint_classes = classes.len();
        let endpoint_ips: HashSet<std::net::IpAddr> =
            engine.endpoints().flat_map(|(_, e)| e.ips.iter().copied()).collect();
        let externals = external_ranges(&blocks, &endpoint_ips);
        for k in 0..externals.len() {
            class_of.push(classes.len() as u32);
            classes.push(vec![endpoints.len() + k]);
        }
        let end = |i: usize| match endpoints.get(i) {
            Some(&id) => FlowEnd::Endpoint(id),
            None => FlowEnd::Address(externals[i - endpoints.len()].representative),
        };
        let n = classes.len();
        let candidates = PeerCandidates::new(engine, &end, &classes, &blocks, &externals);
        let mut interned: HashMap<ConnSet, u32> = HashMap::new();
        let mut conns = Vec::new();
        let mut intern = |c: ConnSet| -> u32 {
            if let Some(&id) = interned.get(&c) {
                return id;
            }
            let id = conns.len() as u32;
            interned.insert(c.clone(), id);
            conns.push(c);
            id
        };
        let none = intern(ConnSet::none());
        let all = intern(ConnSet::all());
        let mut cells = Cells::new(endpoint_classes, n, none);
        // Not isolated in a direction (or outside the cluster): that side allows everything.
        let open = |c: usize, direction: Direction| match end(classes[c][0]) {
            FlowEnd::Endpoint(id) => engine.compiled(engine.endpoint_identity(id)).direction(direction).is_none(),
            FlowEnd::Address(_) => true,
        };
        let open_egress: Vec<bool> = (0..n).map(|c| open(c, Direction::Egress)).collect();
        let open_ingress: Vec<bool> = (0..n).map(|c| open(c, Direction::Ingress)).collect();
        let block_index: HashMap<&IpBlock, u32> = blocks.iter().enumerate().map(|(j, b)| (&**b, j as u32)).collect();
        let sides = |direction| -> Vec<Option<BlockConns>> {
            if externals.is_empty() {
                return Vec::new();
            }
            (0..endpoint_classes).map(|c| BlockConns::of(engine, end(classes[c][0]), direction, &block_index)).collect()
        };
        let (to_outside, from_outside) = (sides(Direction::Egress), sides(Direction::Ingress));
        for a in 0..n {
            let src = end(classes[a][0]);
            let egress_peers = candidates.egress[a].as_ref();
            for b in cells.columns(a) {
                // Denied by construction: no rule of an isolated side can match the other.
                let excluded = egress_peers.is_some_and(|c| !c.contains(b as u32))
                    || candidates.ingress[b].as_ref().is_some_and(|c| !c.contains(a as u32));
                if excluded && !candidates.special[a] && !candidates.special[b] {
                    continue;
                }
                if open_egress[a] && open_ingress[b] && (a != b || classes[b].len() > 1) {
                    cells.set(a, b, all);
                    continue;
                }
                // With an outside range only the endpoint's side decides:
                // the union of what its entries for the range's blocks open.
                if b >= endpoint_classes {
                    let range = &externals[b - endpoint_classes];
                    cells.set(a, b, intern(BlockConns::outside(&to_outside[a], &range.blocks)));
                    continue;
                }
                if a >= endpoint_classes {
                    let range = &externals[a - endpoint_classes];
                    cells.set(a, b, intern(BlockConns::outside(&from_outside[b], &range.blocks)));
                    continue;
                }
                let dst_index = if a == b {
                    match classes[b].get(1) {
                        Some(&second) => second,
                        // A lone workload and itself: traffic between its replicas.
                        None if !engine.endpoint(endpoints[classes[b][0]]).is_one_pod() => classes[b][0],
                        None => continue, // one pod and itself: see `self_cell`
                    }
                } else {
                    classes[b][0]
                };
                let conn = engine.connections(&src, &end(dst_index));
                cells.set(a, b, intern(conn));
            }
        }
        Matrix { endpoints, externals, class_of, classes, cells, conns }
    }

    /// Endpoints and outside ranges: the members of rows and columns.
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.externals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outside range at member index `i`, if `i` is one.
    pub fn external(&self, i: usize) -> Option<&ExternalRange> {
        i.checked_sub(self.endpoints.len()).and_then(|k| self.externals.get(k))
    }

    /// Member `i` as a flow's end: an endpoint, or its range's representative address.
    pub fn end(&self, i: usize) -> FlowEnd {
        match self.external(i) {
            Some(range) => FlowEnd::Address(range.representative),
            None => FlowEnd::Endpoint(self.endpoints[i]),
        }
    }

    /// Connections from endpoint index `i` to endpoint index `j` (`i != j`).
    pub fn get(&self, i: usize, j: usize) -> &ConnSet {
        &self.conns[self.cells.get(self.class_of[i] as usize, self.class_of[j] as usize) as usize]
    }

    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Rows of (sources, destinations, connections) covering every allowed
    /// ordered pair: classes with identical rows merge, so a namespace with
    /// one policy reads as one line whatever its size.
    pub fn grouped(&self, engine: &Engine) -> Vec<GroupRow> {
        let n = self.classes.len();
        let none_id = self.conns.iter().position(|c| c.is_none()).map(|i| i as u32);
        let key = |c: usize| match self.end(self.classes[c][0]) {
            FlowEnd::Endpoint(id) => Some(&engine.endpoint(id).key),
            FlowEnd::Address(_) => None,
        };
        let same_namespace =
            |a: usize, b: usize| matches!((key(a), key(b)), (Some(ka), Some(kb)) if ka.namespace == kb.namespace);
        // A lone endpoint's cell with itself is free (self traffic is always
        // allowed): give it the value most common in its own namespace so it
        // groups with its neighbours.
        let self_cell = |a: usize| -> Option<u32> {
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for b in (0..n).filter(|&b| b != a && same_namespace(a, b)) {
                *counts.entry(self.cells.get(a, b)).or_default() += 1;
            }
            counts.into_iter().max_by_key(|(c, k)| (*k, std::cmp::Reverse(*c))).map(|(c, _)| c)
        };
        let mut by_signature: BTreeMap<Vec<(u32, Vec<u32>)>, Vec<u32>> = BTreeMap::new();
        for a in 0..n {
            let mut row: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let lone_pod = self.classes[a].len() == 1
                && matches!(self.end(self.classes[a][0]), FlowEnd::Endpoint(id) if engine.endpoint(id).is_one_pod());
            for b in self.cells.columns(a) {
                let cell = if a == b && lone_pod { self_cell(a) } else { Some(self.cells.get(a, b)) };
                match cell {
                    Some(c) if Some(c) != none_id => row.entry(c).or_default().push(b as u32),
                    _ => {}
                }
            }
            by_signature.entry(row.into_iter().collect()).or_default().push(a as u32);
        }
        let members = |classes: &[u32]| -> Vec<usize> {
            let mut v: Vec<usize> = classes.iter().flat_map(|&c| self.classes[c as usize].iter().copied()).collect();
            v.sort_unstable();
            v
        };
        let mut rows = Vec::new();
        for (signature, srcs) in by_signature {
            let sources = members(&srcs);
            for (conn, dsts) in signature {
                rows.push(GroupRow {
                    sources: sources.clone(),
                    destinations: members(&dsts),
                    connections: self.conns[conn as usize].clone(),
                });
            }
        }
        rows.sort_by(|a, b| {
            (a.sources.first(), a.destinations.first()).cmp(&(b.sources.first(), b.destinations.first()))
        });
        rows
    }
}

/// One direction of an isolated endpoint class, as an outside range sees
/// it: what its any-peer entries open, and what its ipBlock entries open,
/// by block. `None`: not isolated, everything is open.
struct BlockConns {
    any: ConnSet,
    by_block: HashMap<u32, ConnSet>,
}

impl BlockConns {
    fn of(engine: &Engine, end: FlowEnd, direction: Direction, blocks: &HashMap<&IpBlock, u32>) -> Option<Self> {
        let FlowEnd::Endpoint(id) = end else { return None };
        let identity = engine.endpoint_identity(id);
        let side = engine.compiled(identity).direction(direction)?;
        // Named ports resolve at the destination: this endpoint for ingress,
        // nothing outside the cluster for egress.
        let dst = (direction == Direction::Ingress).then(|| engine.identity(identity));
        let mut out = BlockConns { any: ConnSet::none(), by_block: HashMap::new() };
        for e in &side.entries {
            match &e.peer {
                PeerMatch::Any => out.any.union(&Engine::entry_ports(&e.ports, dst)),
                PeerMatch::IpBlock(b) => {
                    let j = blocks[&**b];
                    out.by_block.entry(j).or_insert_with(ConnSet::none).union(&Engine::entry_ports(&e.ports, dst))
                }
                // Selectors select endpoints, never outside addresses.
                PeerMatch::Selector(_) => {}
            }
        }
        Some(out)
    }

    fn outside(side: &Option<BlockConns>, range_blocks: &[u32]) -> ConnSet {
        let Some(side) = side else { return ConnSet::all() };
        let mut out = side.any.clone();
        for j in range_blocks {
            if let Some(c) = side.by_block.get(j) {
                out.union(c);
            }
        }
        out
    }
}

/// The connection-set ids of class pairs: every endpoint class to every
/// class, every outside range to every endpoint class. Two outside ranges
/// have no cell (traffic between them is not the cluster's), so a thousand
/// ranges cost a thousand rows of endpoint columns, not a million cells.
struct Cells {
    endpoint_classes: usize,
    classes: usize,
    data: Vec<u32>,
    none: u32,
}

impl Cells {
    fn new(endpoint_classes: usize, classes: usize, none: u32) -> Self {
        let size = endpoint_classes * classes + (classes - endpoint_classes) * endpoint_classes;
        Cells { endpoint_classes, classes, data: vec![none; size], none }
    }

    fn index(&self, a: usize, b: usize) -> Option<usize> {
        let e = self.endpoint_classes;
        if a < e {
            Some(a * self.classes + b)
        } else if b < e {
            Some(e * self.classes + (a - e) * e + b)
        } else {
            None
        }
    }

    fn get(&self, a: usize, b: usize) -> u32 {
        self.index(a, b).map_or(self.none, |i| self.data[i])
    }

    fn set(&mut self, a: usize, b: usize, id: u32) {
        if let Some(i) = self.index(a, b) {
            self.data[i] = id;
        }
    }

    /// The classes row `a` has cells for.
    fn columns(&self, a: usize) -> std::ops::Range<usize> {
        if a < self.endpoint_classes {
            0..self.classes
        } else {
            0..self.endpoint_classes
        }
    }
}

/// For each class isolated in a direction, the classes some rule's peer
/// can match: every other pair is denied without evaluating it, so the
/// matrix costs what the allowed pairs cost in default-deny clusters.
struct PeerCandidates {
    ingress: Vec<Option<BitSet>>,
    egress: Vec<Option<BitSet>>,
    /// Classes of host-network endpoints: node-local traffic is allowed
    /// whatever the rules say, so their pairs are always evaluated.
    special: Vec<bool>,
}

impl PeerCandidates {
    fn new(
        engine: &Engine,
        end: &dyn Fn(usize) -> FlowEnd,
        classes: &[Vec<usize>],
        blocks: &[Arc<IpBlock>],
        externals: &[ExternalRange],
    ) -> Self {
        let n = classes.len();
        let mut by_identity: HashMap<IdentityId, Vec<u32>> = HashMap::new();
        let mut by_block: Vec<Vec<u32>> = vec![Vec::new(); blocks.len()];
        let mut special = vec![false; n];
        let endpoint_classes = classes.len() - externals.len();
        for (c, members) in classes.iter().enumerate() {
            match end(members[0]) {
                FlowEnd::Endpoint(id) => {
                    by_identity.entry(engine.endpoint_identity(id)).or_default().push(c as u32);
                    let ep = engine.endpoint(id);
                    special[c] = ep.host_network;
                    for (j, b) in blocks.iter().enumerate() {
                        if ep.ips.iter().any(|ip| b.contains(*ip)) {
                            by_block[j].push(c as u32);
                        }
                    }
                }
                // The cut already knows which blocks hold a range.
                FlowEnd::Address(_) => {
                    for &j in &externals[c - endpoint_classes].blocks {
                        by_block[j as usize].push(c as u32);
                    }
                }
            }
        }
        let block_index: HashMap<&IpBlock, usize> = blocks.iter().enumerate().map(|(j, b)| (&**b, j)).collect();
        let side = |direction: Direction| -> Vec<Option<BitSet>> {
            (0..n)
                .map(|c| {
                    // Outside addresses have no policy of ours: never isolated.
                    let FlowEnd::Endpoint(id) = end(classes[c][0]) else { return None };
                    let compiled = engine.compiled(engine.endpoint_identity(id));
                    let policy = compiled.direction(direction)?;
                    let mut set = BitSet::default();
                    for e in &policy.entries {
                        match &e.peer {
                            PeerMatch::Any => return None,
                            PeerMatch::Selector(sel) => {
                                for i in engine.selector_cache().members(*sel).iter() {
                                    for &k in by_identity.get(&IdentityId(i)).into_iter().flatten() {
                                        set.insert(k);
                                    }
                                }
                            }
                            PeerMatch::IpBlock(b) => {
                                for &k in &by_block[block_index[&**b]] {
                                    set.insert(k);
                                }
                            }
                        }
                    }
                    Some(set)
                })
                .collect()
        };
        PeerCandidates { ingress: side(Direction::Ingress), egress: side(Direction::Egress), special }
    }
}

/// One line of the grouped table: every source may open `connections` to
/// every destination (self pairs aside: always allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub sources: Vec<usize>,
    pub destinations: Vec<usize>,
    pub connections: ConnSet,
}
