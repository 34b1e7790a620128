//! Churn: while probe threads connect continuously between lab pods, 1,000
//! random label and policy changes are applied. No probe may succeed that
//! the engine forbids at that moment. A probe running while changes land
//! may meet the state before or after each of them, so every side of the
//! flow (the source node's egress, the destination node's ingress) must be
//! allowed by one of the states that were in the kernel during the probe.
//! Needs root.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade_dataplane::netns::Netns;
use palisade_dataplane::DenyAction;
use palisade_engine::Engine;
use palisade_lab::probe::connect_tcp;
use palisade_lab::{Lab, LabOptions};
use palisade_model::{Cluster, EndpointKey};
use palisade_testkit::churn::{judge, Rng, Seen, World};

use common::{cluster, privileged, run_id};

const PODS: usize = 6;
const CHANGES: usize = 1000;

#[test]
fn no_probe_is_ever_allowed_that_the_engine_forbids() {
    if !privileged("churn") {
        return;
    }
    let seed = 0x5eed_0001u64;
    let mut rng = Rng(seed);
    let mut world = World::new(PODS, PODS, 4);
    for k in 0..2 {
        world.policies[k] = Some(world.random_policy(&mut rng, k));
    }
    // Reject: denied probes end at once, so the loop probes often.
    let opts = LabOptions { deny: DenyAction::Reject, ..LabOptions::default() };
    let mut lab = Lab::start(&cluster(&world.manifests()), &run_id("c"), &[], opts, |_, _| {}).unwrap();
    lab.apply().unwrap();

    let states: Arc<Mutex<Vec<Cluster>>> = Arc::new(Mutex::new(vec![lab.cluster.clone()]));
    let applied = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pods: Vec<(EndpointKey, Netns, SocketAddr)> = lab
        .topology
        .plan
        .pods
        .iter()
        .map(|p| (p.key.clone(), Netns::named(&p.netns), SocketAddr::new(p.ips[0], 80)))
        .collect();
    let mut probers = Vec::new();
    for t in 0..4u64 {
        let (pods, applied, stop) = (pods.clone(), applied.clone(), stop.clone());
        probers.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9 + t);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (s, d) = (rng.below(PODS), rng.below(PODS));
                if s == d {
                    continue;
                }
                let from = applied.load(Ordering::SeqCst);
                let connected = connect_tcp(&pods[s].1, pods[d].2, Duration::from_millis(1000))
                    .is_ok_and(|(_, greeting)| greeting == pods[d].0.to_string());
                let to = applied.load(Ordering::SeqCst);
                seen.push(Seen { src: pods[s].0.clone(), dst: pods[d].0.clone(), from, to, connected });
                // A few hundred probes a second over all threads.
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        }));
    }

    let started = Instant::now();
    for i in 1..=CHANGES {
        world.change(&mut rng, false);
        lab.update(&cluster(&world.manifests())).unwrap();
        states.lock().unwrap().push(lab.cluster.clone());
        lab.apply().unwrap_or_else(|e| panic!("change {i}: {e}: {:?}", std::error::Error::source(&e)));
        applied.store(i, Ordering::SeqCst);
    }
    let churn = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = probers.into_iter().flat_map(|p| p.join().unwrap()).collect();

    let engines: Vec<Engine> = states.lock().unwrap().iter().map(Engine::from_cluster).collect();
    let (violations, wrongly_denied) = judge(&seen, &engines);
    let connected = seen.iter().filter(|s| s.connected).count();
    eprintln!(
        "churn (seed {seed:#x}): {CHANGES} changes in {:.1} s ({:.1} ms each), {} probes ({connected} connected), {} violations, {wrongly_denied} allowed probes refused, {} patches refused and resynced",
        churn.as_secs_f64(),
        churn.as_secs_f64() * 1000.0 / CHANGES as f64,
        seen.len(),
        violations.len(),
        lab.resyncs
    );
    assert!(seen.len() > 1000, "the probe loop barely ran: {} probes", seen.len());
    assert!(connected > 100 && connected < seen.len(), "the changes should both allow and deny");
    assert!(
        violations.is_empty(),
        "{} probes got through what the engine forbade:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert_eq!(wrongly_denied, 0, "probes refused although every state in their window allowed them");
    assert_eq!(lab.resyncs, 0, "every change must be a patch the kernel accepts (see the lab's log above)");
}
