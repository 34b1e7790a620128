//! `palisade bench dataplane --paired`: Palisade against the conntrack
//! floor in adjacent short slices. This machine's rates drift by ±20% over
//! seconds (2 shared vCPUs), more than the 3% the target allows, and a full
//! table load at 50,000 entries takes most of a second. So each entry count
//! is loaded once, and only the forward hook's rules are swapped between
//! Palisade's and the floor's (`ct state established,related accept; ct
//! state invalid drop`), and the pods' tc sender checks removed and put
//! back: one small `nft -f` and one `tc -batch` per node, with the sets and
//! chains left in place, unreferenced, while the floor is measured. Each
//! pair of slices gives one ratio; drift slower than a pair cancels.

use std::io::Write;

use anyhow::{Context, Result};
use palisade_dataplane::netns::Netns;
use palisade_lab::Lab;
use palisade_model::Cluster;

use super::bench_dataplane::{set_config, set_sender_checks, BenchPath, Rates};
use crate::cli::BenchDataplaneArgs;

const FLOOR_RULES: &str = "add rule inet palisade forward ct state established,related accept\n\
                           add rule inet palisade forward ct state invalid drop\n";

/// The two forward chains of every node, ready to swap in.
struct Swap {
    nodes: Vec<(Netns, String)>,
}

impl Swap {
    /// Takes each node's Palisade forward chain as the kernel lists it.
    fn capture(lab: &Lab) -> Result<Swap> {
        let mut nodes = Vec::new();
        for n in 0..lab.topology.plan.nodes.len() {
            let ns = lab.topology.node_netns(n);
            let listing = ns.exec("nft", &["list", "chain", "inet", "palisade", "forward"], None)?;
            anyhow::ensure!(listing.contains("jump from_pod"), "node {n}: not Palisade's forward chain:\n{listing}");
            nodes.push((ns, listing));
        }
        Ok(Swap { nodes })
    }

    /// Puts the floor (`floor`: its two rules, and no sender checks on the
    /// pods' veths) or Palisade (its rules and checks) in force on every
    /// node, one nft transaction per node.
    fn set(&self, lab: &Lab, floor: bool) -> Result<()> {
        for (ns, listing) in &self.nodes {
            let rules = if floor { FLOOR_RULES } else { listing };
            let script = format!("flush chain inet palisade forward\n{rules}");
            ns.exec("nft", &["-f", "-"], Some(&script)).with_context(|| format!("{}: swapping rules", ns.name))?;
        }
        set_sender_checks(lab, !floor)
    }
}

pub(super) fn paired(
    lab: &mut Lab,
    cluster: &Cluster,
    paths: &[BenchPath],
    args: &BenchDataplaneArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let client = {
        let plan = &lab.topology.plan;
        Netns::named(&plan.pods.iter().find(|p| p.key.name == "client").context("bench client")?.netns)
    };
    writeln!(
        out,
        "dataplane bench, paired: per entry count, {} pairs of adjacent {:.2} s slices (floor, Palisade; the order \
         alternates),\nonly the forward hook's rules swapped between them; ratios are the geometric mean over \
         pairs of Palisade / floor [95% confidence interval];\ncpu columns: the floor's CPU time per operation / Palisade's \
         (below 1: more CPU than the floor)",
        args.rounds, args.seconds
    )?;
    writeln!(
        out,
        "{:<12} {:>8} {:>20} {:>20} {:>20} {:>20} {:>20}",
        "path", "entries", "RR/ct", "CRR/ct", "Gbit/ct", "ct/RRcpu", "ct/CRRcpu"
    )?;
    for &entries in &args.entries {
        set_config(lab, cluster, "palisade", Some(entries))?;
        let swap = Swap::capture(lab)?;
        // pairs[path] = (palisade, floor) per pair
        let mut pairs: Vec<Vec<(Rates, Rates)>> = vec![Vec::new(); paths.len()];
        for pair in 0..args.rounds {
            let slice = |floor: bool| -> Result<Vec<Rates>> {
                swap.set(lab, floor)?;
                paths.iter().map(|p| p.measure(&client, args.seconds)).collect()
            };
            let (policy, floor) = if pair % 2 == 0 {
                let f = slice(true)?;
                (slice(false)?, f)
            } else {
                let p = slice(false)?;
                (p, slice(true)?)
            };
            for (i, (p, f)) in policy.into_iter().zip(floor).enumerate() {
                pairs[i].push((p, f));
            }
        }
        swap.set(lab, false)?;
        eprintln!("{entries} entries: {} pairs measured", args.rounds);
        for (path, samples) in paths.iter().zip(&pairs) {
            let summary = |ratio: fn(&Rates, &Rates) -> f64| {
                let (g, lo, hi) = geomean_ci(&samples.iter().map(|(p, f)| ratio(p, f)).collect::<Vec<_>>());
                format!("{g:.3} [{lo:.3}-{hi:.3}]")
            };
            writeln!(
                out,
                "{:<12} {:>8} {:>20} {:>20} {:>20} {:>20} {:>20}",
                path.name,
                entries,
                summary(|p, f| p.rr / f.rr),
                summary(|p, f| p.crr / f.crr),
                summary(|p, f| p.gbits / f.gbits),
                summary(|p, f| f.cpu_rr / p.cpu_rr),
                summary(|p, f| f.cpu_crr / p.cpu_crr),
            )?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Geometric mean of ratios and its 95% confidence interval (normal
/// approximation on the logarithms: pairs are independent, and their log
/// ratios are close to symmetric).
fn geomean_ci(ratios: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let var = if n > 1.0 { logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    let half = 1.96 * (var / n).sqrt();
    (mean.exp(), (mean - half).exp(), (mean + half).exp())
}

#[cfg(test)]
mod tests {
    use super::geomean_ci;

    #[test]
    fn geomean_ci_brackets_the_mean_and_narrows_with_samples() {
        let (g, lo, hi) = geomean_ci(&[0.5, 2.0]);
        assert!((g - 1.0).abs() < 1e-12 && lo < 1.0 && hi > 1.0);
        let few = geomean_ci(&[0.9, 1.1, 0.95, 1.05]);
        let many = geomean_ci(&[0.9, 1.1, 0.95, 1.05].repeat(25));
        assert!(many.2 - many.1 < (few.2 - few.1) / 4.0, "{few:?} {many:?}");
        let (g, lo, hi) = geomean_ci(&[0.97]);
        assert!((g - 0.97).abs() < 1e-12 && lo == g && hi == g);
    }
}
