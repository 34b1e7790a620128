//! `palisade lint`: findings with ids, severities and fixes.

use std::io::Write;

use anyhow::Result;
use palisade_engine::lint::{lint, Severity};

use crate::cli::{FailOn, LintArgs, TextOrJson};
use crate::input::{load_input, Failure, Ui};

pub fn run(args: &LintArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let (_, engine) = load_input(&args.input, ui)?;
    let findings = lint(&engine);
    if args.format == TextOrJson::Json {
        serde_json::to_writer_pretty(&mut *out, &findings)?;
        writeln!(out)?;
    } else {
        // Findings are diagnostics: stderr, like compiler warnings.
        for f in &findings {
            eprintln!(
                "{}[{}]: {}: {}\n  fix: {}",
                ui.severity(&f.severity.to_string()),
                f.id,
                f.object,
                f.message,
                f.fix
            );
        }
        let count = |s| findings.iter().filter(|f| f.severity == s).count();
        writeln!(
            out,
            "{} finding(s): {} error, {} warning, {} info",
            findings.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Info)
        )?;
    }
    let threshold = match args.fail_on {
        FailOn::Info => Some(Severity::Info),
        FailOn::Warning => Some(Severity::Warning),
        FailOn::Error => Some(Severity::Error),
        FailOn::Never => None,
    };
    if let Some(t) = threshold {
        let failing = findings.iter().filter(|f| f.severity >= t).count();
        if failing > 0 {
            return Err(Failure::Findings(format!("{failing} finding(s) at or above --fail-on {t}")).into());
        }
    }
    Ok(())
}
