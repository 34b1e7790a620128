//! Plain aligned text tables, the default output of every command.

use std::io::{self, Write};

/// Writes rows with columns padded to the widest cell; the last column is
/// not padded, so long connection lists do not push lines wider.
pub fn write(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let cols = header.len();
    let mut width = vec![0usize; cols];
    for row in std::iter::once(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>()).chain(rows) {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cols {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    for row in rows {
        line(out, row)?;
    }
    Ok(())
}
