//! A small typed model of the nftables objects Palisade owns, and the
//! transactions that change them (after kube-proxy's knftables): a list of
//! (verb, object) rendered once and applied with one `nft -f -`, which the
//! kernel commits all or nothing.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The address family and name of our one table. We never touch others.
pub const FAMILY: &str = "inet";

/// A set or map key: one nft type, or a concatenation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyType(pub Vec<&'static str>);

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" . "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub name: String,
    pub key: KeyType,
    /// `Some(verdict type)` makes it a map (`: verdict`).
    pub map_to: Option<&'static str>,
    /// Interval sets hold ranges and prefixes.
    pub interval: bool,
    pub comment: String,
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: &'static str,
    pub policy: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    pub name: String,
    pub hook: Option<Hook>,
    pub comment: String,
}

/// A rule: match expressions and a verdict, rendered as nft syntax, with a
/// comment naming where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub exprs: Vec<String>,
    pub comment: Option<String>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.exprs.join(" "))?;
        if let Some(c) = &self.comment {
            write!(f, " comment {}", quote(c))?;
        }
        Ok(())
    }
}

/// The longest comment nft accepts, in bytes.
pub const MAX_COMMENT: usize = 128;

/// nft string literal (comments). nft 1.0.6 has no escapes inside quotes,
/// so double quotes are replaced; comments longer than nft allows are cut
/// (on a character boundary) and end with `...`.
pub fn quote(s: &str) -> String {
    let mut text = s.replace('"', "'");
    if text.len() > MAX_COMMENT {
        let mut cut = MAX_COMMENT - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("\"{text}\"")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddChain(ChainDef),
    FlushChain(String),
    DeleteChain(String),
    AddSet(SetDef),
    FlushSet(String),
    DeleteSet(String),
    AddElements { set: String, elements: Vec<String> },
    DeleteElements { set: String, elements: Vec<String> },
    AddRule { chain: String, rule: Rule },
}

/// One kernel transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub table: String,
    pub ops: Vec<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the transaction (nothing was changed): {stderr}")]
    Rejected { stderr: String, script: String },
}

const ELEMENTS_PER_LINE: usize = 1000;

impl Transaction {
    pub fn new(table: &str) -> Self {
        Transaction { table: table.to_string(), ops: Vec::new() }
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The `nft -f` script.
    pub fn render(&self) -> String {
        let t = format!("{FAMILY} {}", self.table);
        let mut s = String::new();
        for op in &self.ops {
            match op {
                Op::AddTable => writeln!(s, "add table {t}"),
                Op::DeleteTable => writeln!(s, "delete table {t}"),
                Op::AddChain(c) => match &c.hook {
                    Some(h) => writeln!(
                        s,
                        "add chain {t} {} {{ type {} hook {} priority {}; policy {}; comment {}; }}",
                        c.name,
                        h.kind,
                        h.hook,
                        h.priority,
                        h.policy,
                        quote(&c.comment)
                    ),
                    None => writeln!(s, "add chain {t} {} {{ comment {}; }}", c.name, quote(&c.comment)),
                },
                Op::FlushChain(c) => writeln!(s, "flush chain {t} {c}"),
                Op::DeleteChain(c) => writeln!(s, "delete chain {t} {c}"),
                Op::AddSet(d) => {
                    let kind = if d.map_to.is_some() { "map" } else { "set" };
                    let value = d.map_to.map(|v| format!(" : {v}")).unwrap_or_default();
                    let flags = if d.interval { " flags interval;" } else { "" };
                    writeln!(
                        s,
                        "add {kind} {t} {} {{ type {}{value};{flags} comment {}; }}",
                        d.name,
                        d.key,
                        quote(&d.comment)
                    )
                }
                Op::FlushSet(n) => writeln!(s, "flush set {t} {n}"),
                Op::DeleteSet(n) => writeln!(s, "delete set {t} {n}"),
                Op::AddElements { set, elements } | Op::DeleteElements { set, elements } => {
                    let verb = if matches!(op, Op::AddElements { .. }) { "add" } else { "delete" };
                    for chunk in elements.chunks(ELEMENTS_PER_LINE) {
                        writeln!(s, "{verb} element {t} {set} {{ {} }}", chunk.join(", ")).expect("string write");
                    }
                    Ok(())
                }
                Op::AddRule { chain, rule } => writeln!(s, "add rule {t} {chain} {rule}"),
            }
            .expect("writing to a String cannot fail");
        }
        s
    }

    /// Applies the whole transaction with one `nft -f -`: the kernel commits
    /// it all or none of it. On error the previous state is untouched.
    pub fn apply(&self) -> Result<(), NftError> {
        self.apply_in(None)
    }

    /// As [`apply`](Self::apply), inside a named network namespace (the lab's nodes).
    pub fn apply_in(&self, netns: Option<&str>) -> Result<(), NftError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let script = self.render();
        run_nft_in(netns, &["-f", "-"], Some(&script)).map(|_| ())
    }
}

/// Runs nft with optional stdin; returns stdout.
pub fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    run_nft_in(None, args, stdin)
}

/// Runs nft, inside `netns` when given (`ip netns exec`).
pub fn run_nft_in(netns: Option<&str>, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Rejected {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            script: stdin.unwrap_or_default().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Does our table exist (in the current network namespace)?
pub fn table_exists(table: &str) -> bool {
    run_nft(&["list", "table", FAMILY, table], None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_comments_are_cut_to_what_nft_accepts() {
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.len() - 2 <= MAX_COMMENT, "{} bytes", q.len());
        assert!(q.ends_with("...\""));
        assert_eq!(quote("short"), "\"short\"");
    }

    #[test]
    fn renders_flat_commands_in_order() {
        let mut tx = Transaction::new("palisade");
        tx.push(Op::AddTable);
        tx.push(Op::AddSet(SetDef {
            name: "sel_1_v4".into(),
            key: KeyType(vec!["ipv4_addr"]),
            map_to: None,
            interval: false,
            comment: "pods app=web in namespace shop".into(),
        }));
        tx.push(Op::AddElements { set: "sel_1_v4".into(), elements: vec!["10.0.0.1".into(), "10.0.0.2".into()] });
        tx.push(Op::AddRule {
            chain: "ing_1".into(),
            rule: Rule {
                exprs: vec!["ip saddr @sel_1_v4".into(), "accept".into()],
                comment: Some("shop/web \"x\"".into()),
            },
        });
        assert_eq!(
            tx.render(),
            "add table inet palisade\n\
             add set inet palisade sel_1_v4 { type ipv4_addr; comment \"pods app=web in namespace shop\"; }\n\
             add element inet palisade sel_1_v4 { 10.0.0.1, 10.0.0.2 }\n\
             add rule inet palisade ing_1 ip saddr @sel_1_v4 accept comment \"shop/web 'x'\"\n"
        );
    }
}
