//! `palisade diff`: connections gained and lost between two manifest sets.

use std::io::Write;

use anyhow::Result;
use palisade_engine::diff::diff;

use crate::cli::{DiffArgs, TextOrJson};
use crate::input::{load_pair, Failure, Ui};
use crate::output;

pub fn run(args: &DiffArgs, ui: &Ui, out: &mut dyn Write) -> Result<()> {
    let (old, new) =
        load_pair(std::slice::from_ref(&args.old), std::slice::from_ref(&args.new), args.skip_invalid, ui)?;
    let (old_m, new_m) = palisade_engine::diff::matrices(&old, &new);
    let changes = diff((&old, &old_m), (&new, &new_m));
    if args.format == TextOrJson::Json {
        serde_json::to_writer_pretty(&mut *out, &changes)?;
        writeln!(out)?;
    } else if changes.is_empty() {
        writeln!(out, "no connection gained or lost")?;
    } else {
        let rows: Vec<Vec<String>> = changes
            .iter()
            .map(|c| {
                let mark = match (c.gained.is_none(), c.lost.is_none()) {
                    (false, true) => "+",
                    (true, false) => "-",
                    _ => "~",
                };
                let show = |s: &palisade_engine::ConnSet| {
                    if s.is_none() {
                        String::new()
                    } else {
                        s.to_string()
                    }
                };
                vec![mark.to_string(), c.source.clone(), c.destination.clone(), show(&c.gained), show(&c.lost)]
            })
            .collect();
        output::table::write(out, &["", "SOURCE", "DESTINATION", "GAINED", "LOST"], &rows)?;
    }
    if args.exit_code && !changes.is_empty() {
        return Err(Failure::Findings(format!("{} pair(s) changed", changes.len())).into());
    }
    Ok(())
}
