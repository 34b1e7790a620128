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
use crate::cli::{BenchDataplaneArgs, PairedPart};

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
    fn set(&self, lab: &Lab, floor: bool, part: PairedPart) -> Result<()> {
        let rules = !floor && part != PairedPart::Checks;
        let checks = !floor && part != PairedPart::Rules;
        for (ns, listing) in &self.nodes {
            let rules = if rules { listing } else { FLOOR_RULES };
            let script = format!("flush chain inet palisade forward\n{rules}");
            ns.exec("nft", &["-f", "-"], Some(&script)).with_context(|| format!("{}: swapping rules", ns.name))?;
        }
        set_sender_checks(lab, checks)
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
         alternates),\nonly the forward hook's rules and the veths' sender checks swapped between them; \
         ratios are Palisade / floor per pair: the median over pairs [its distribution-free 95% confidence \
         interval],\nand the geometric mean [Student's t 95% interval]. The median is what to read: the host \
         switches this VM between a fast and a\nslow regime every few seconds (the floor's rate moves by 30%), \
         and a pair that straddles a switch is an outlier the median ignores.",
        even_pairs(args.rounds),
        args.seconds
    )?;
    writeln!(
        out,
        "{:<12} {:>8} {:>20} {:>20} {:>20}  {:<42} floor (median RR/s, CRR/s, Gbit/s)",
        "path", "entries", "RR/ct (median)", "CRR/ct (median)", "Gbit/ct (median)", "geometric means: RR, CRR, Gbit"
    )?;
    let pairs_n = even_pairs(args.rounds);
    match args.part {
        PairedPart::Both => {}
        PairedPart::Rules => writeln!(out, "Palisade slices: its forward chain only, no veth sender checks")?,
        PairedPart::Checks => writeln!(out, "Palisade slices: the veth sender checks only, under the floor's rules")?,
    }
    let mut raw = match &args.samples {
        Some(path) => {
            let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
            writeln!(
                f,
                "entries\tpath\tpair\tfloor_first\tfloor_rr\tpalisade_rr\tfloor_crr\tpalisade_crr\tfloor_gbits\t\
                 palisade_gbits\tfloor_cpu_rr\tpalisade_cpu_rr\tfloor_cpu_crr\tpalisade_cpu_crr"
            )?;
            Some(f)
        }
        None => None,
    };
    for &entries in &args.entries {
        set_config(lab, cluster, "palisade", Some(entries))?;
        let swap = Swap::capture(lab)?;
        // pairs[path] = (palisade, floor) per pair
        let mut pairs: Vec<Vec<(Rates, Rates)>> = vec![Vec::new(); paths.len()];
        for pair in 0..pairs_n {
            let slice = |floor: bool| -> Result<Vec<Rates>> {
                swap.set(lab, floor, args.part)?;
                // Freed rules and qdiscs are reclaimed (RCU) before measuring.
                std::thread::sleep(std::time::Duration::from_millis(100));
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
        swap.set(lab, false, PairedPart::Both)?;
        eprintln!("{entries} entries: {pairs_n} pairs measured");
        if let Some(f) = raw.as_mut() {
            for (path, samples) in paths.iter().zip(&pairs) {
                for (k, (p, fl)) in samples.iter().enumerate() {
                    writeln!(
                        f,
                        "{entries}\t{}\t{k}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.3}\t{:.3}\t{:.2}\t{:.2}\t{:.2}\t{:.2}",
                        path.name,
                        k % 2 == 0,
                        fl.rr,
                        p.rr,
                        fl.crr,
                        p.crr,
                        fl.gbits,
                        p.gbits,
                        fl.cpu_rr,
                        p.cpu_rr,
                        fl.cpu_crr,
                        p.cpu_crr
                    )?;
                }
            }
        }
        for (path, samples) in paths.iter().zip(&pairs) {
            let ratios =
                |ratio: fn(&Rates, &Rates) -> f64| samples.iter().map(|(p, f)| ratio(p, f)).collect::<Vec<_>>();
            let median = |ratio: fn(&Rates, &Rates) -> f64| {
                let (m, lo, hi) = median_ci(&ratios(ratio));
                format!("{m:.3} [{lo:.3}-{hi:.3}]")
            };
            let geomean = |ratio: fn(&Rates, &Rates) -> f64| {
                let (g, lo, hi) = geomean_ci(&ratios(ratio));
                format!("{g:.3} [{lo:.2}-{hi:.2}]")
            };
            let means = format!(
                "{}, {}, {}",
                geomean(|p, f| p.rr / f.rr),
                geomean(|p, f| p.crr / f.crr),
                geomean(|p, f| p.gbits / f.gbits)
            );
            let floor_median = |f: fn(&Rates) -> f64| {
                let mut v: Vec<f64> = samples.iter().map(|(_, fl)| f(fl)).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            writeln!(
                out,
                "{:<12} {:>8} {:>20} {:>20} {:>20}  {means:<42} {:.0}, {:.0}, {:.2}",
                path.name,
                entries,
                median(|p, f| p.rr / f.rr),
                median(|p, f| p.crr / f.crr),
                median(|p, f| p.gbits / f.gbits),
                floor_median(|r| r.rr),
                floor_median(|r| r.crr),
                floor_median(|r| r.gbits),
            )?;
            out.flush()?;
        }
    }
    Ok(())
}

/// An even number of pairs, at least 2: as many begin with the floor as
/// with Palisade.
fn even_pairs(rounds: usize) -> usize {
    rounds.max(2).div_ceil(2) * 2
}

/// The median of `values` and its distribution-free 95% confidence
/// interval: the order statistics k and n+1-k, with k the largest for
/// which P(Binomial(n, 1/2) < k) <= 2.5%. It assumes only that pairs are
/// independent, so an outlier pair moves it by one rank at most.
fn median_ci(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    // P(X <= i) for X ~ Binomial(n, 1/2), in logs to stay finite at large n.
    let ln_choose = |i: usize| -> f64 { (1..=i).map(|j| ((n + 1 - j) as f64 / j as f64).ln()).sum() };
    let half_n = (n as f64) * 0.5f64.ln();
    let (mut cdf, mut k) = (0.0, 0);
    while k < n {
        let next = cdf + (ln_choose(k) + half_n).exp();
        if next > 0.025 {
            break;
        }
        cdf = next;
        k += 1;
    }
    // k order statistics lie below the interval with probability <= 2.5%.
    if k == 0 {
        return (median, v[0], v[n - 1]);
    }
    (median, v[k - 1], v[n - k])
}

/// Geometric mean of ratios and its 95% confidence interval (Student's t
/// on the logarithms: pairs are independent, and their log ratios are
/// close to symmetric).
fn geomean_ci(ratios: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    if logs.len() < 2 {
        return (mean.exp(), mean.exp(), mean.exp());
    }
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = t975(logs.len() - 1) * (var / n).sqrt();
    (mean.exp(), (mean - half).exp(), (mean + half).exp())
}

/// Student's t, 97.5th percentile, for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        // Cornish-Fisher: within 0.1% of the table's next entries.
        _ => {
            let (z, d) = (1.959964_f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * d) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{geomean_ci, median_ci};

    #[test]
    fn median_ci_uses_the_binomial_order_statistics() {
        // n = 60: the interval is the 22nd to the 39th smallest (1-based).
        let v: Vec<f64> = (1..=60).map(f64::from).collect();
        assert_eq!(median_ci(&v), (30.5, 22.0, 39.0));
        // n = 10: the 2nd to the 9th.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median_ci(&v), (5.5, 2.0, 9.0));
        // Too few pairs for 95%: the whole range.
        assert_eq!(median_ci(&[1.0, 2.0, 3.0]), (2.0, 1.0, 3.0));
        // One wild pair moves the median by one rank, not the interval's width.
        let mut w: Vec<f64> = vec![0.98; 30];
        w.push(0.5);
        assert_eq!(median_ci(&w).0, 0.98);
    }

    #[test]
    fn geomean_ci_brackets_the_mean_and_narrows_with_samples() {
        let (g, lo, hi) = geomean_ci(&[0.5, 2.0]);
        assert!((g - 1.0).abs() < 1e-12 && lo < 1.0 && hi > 1.0);
        assert!((super::t975(40) - 2.021).abs() < 0.002, "{}", super::t975(40));
        assert!((super::t975(120) - 1.980).abs() < 0.002, "{}", super::t975(120));
        let few = geomean_ci(&[0.9, 1.1, 0.95, 1.05]);
        let many = geomean_ci(&[0.9, 1.1, 0.95, 1.05].repeat(25));
        assert!(many.2 - many.1 < (few.2 - few.1) / 4.0, "{few:?} {many:?}");
        let (g, lo, hi) = geomean_ci(&[0.97]);
        assert!((g - 0.97).abs() < 1e-12 && lo == g && hi == g);
    }
}
