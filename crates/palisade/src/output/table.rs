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

/// How wide a cell that lists items may grow before it wraps.
pub const CELL_WIDTH: usize = 72;
/// How many lines such a cell may take; past them the rest are counted.
pub const CELL_LINES: usize = 6;

/// An item longer than `width` (an outside range of many pieces, a
/// variant of many labels) cut after its last `,` that fits, with a count
/// of the pieces left out; `-o json` has it whole.
pub fn shorten(item: &str, width: usize) -> String {
    if item.chars().count() <= width {
        return item.to_string();
    }
    // An outside range keeps its parentheses.
    if let Some(inner) = item.strip_prefix('(').and_then(|i| i.strip_suffix(')')) {
        return format!("({})", shorten(inner, width.saturating_sub(2)));
    }
    let budget = width.saturating_sub(16);
    let cut = item.char_indices().take_while(|(i, _)| *i < budget).filter(|(_, c)| *c == ',').map(|(i, _)| i).last();
    match cut {
        Some(at) => {
            // Pieces are joined by `,`, families by ` + `.
            let left_out = item[at..].matches(',').count() + item[at..].matches(" + ").count();
            format!("{},... (+{left_out})", &item[..at])
        }
        None => item.to_string(),
    }
}

/// Items joined by `, `, wrapped at `width` (an item is never split, a
/// long one is shortened), at most `max_lines` lines: the last says how
/// many items were left out.
pub fn wrap_items(items: &[String], width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<(String, usize)> = Vec::new();
    let mut current = (String::new(), 0usize);
    for (k, item) in items.iter().enumerate() {
        let item = shorten(item, width);
        let piece = if k + 1 == items.len() { item } else { format!("{item},") };
        if current.1 > 0 && current.0.chars().count() + 1 + piece.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if current.1 > 0 {
            current.0.push(' ');
        }
        current.0.push_str(&piece);
        current.1 += 1;
    }
    if current.1 > 0 {
        lines.push(current);
    }
    if lines.len() > max_lines {
        let kept = max_lines.saturating_sub(1);
        let left_out: usize = lines[kept..].iter().map(|(_, n)| n).sum();
        lines.truncate(kept);
        lines.push((format!("... and {left_out} more (-o json lists all)"), 0));
    }
    lines.into_iter().map(|(l, _)| l).collect()
}

/// Rows whose cells may take several lines; columns padded to their widest
/// line, the last column not padded.
pub fn write_multiline(out: &mut dyn Write, header: &[&str], rows: &[Vec<Vec<String>>]) -> io::Result<()> {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            for line in cell {
                width[i] = width[i].max(line.chars().count());
            }
        }
    }
    let header: Vec<Vec<String>> = header.iter().map(|h| vec![h.to_string()]).collect();
    for row in std::iter::once(&header).chain(rows) {
        let height = row.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for l in 0..height {
            let mut s = String::new();
            for (i, cell) in row.iter().enumerate() {
                let text = cell.get(l).map(String::as_str).unwrap_or("");
                if i + 1 == cols {
                    s.push_str(text);
                } else {
                    s.push_str(&format!("{text:<w$}  ", w = width[i]));
                }
            }
            writeln!(out, "{}", s.trim_end())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_wrap_and_are_counted_past_the_last_line() {
        let items: Vec<String> = (0..40).map(|i| format!("ns/pod-{i:02}")).collect();
        let lines = wrap_items(&items, 30, 3);
        assert_eq!(lines, ["ns/pod-00, ns/pod-01,", "ns/pod-02, ns/pod-03,", "... and 36 more (-o json lists all)"]);
        assert_eq!(wrap_items(&items[..2], 30, 3), ["ns/pod-00, ns/pod-01"]);
        // An item longer than the width has a line of its own.
        let long = vec!["x".repeat(40), "y".into()];
        assert_eq!(wrap_items(&long, 30, 3), [format!("{},", "x".repeat(40)), "y".into()]);
        // One of many pieces is shortened, saying how many pieces it leaves out.
        let range = (0..20).map(|i| format!("10.{i}.0.0/16")).collect::<Vec<_>>().join(",");
        assert_eq!(shorten(&range, 50), "10.0.0.0/16,10.1.0.0/16,... (+18)");
        // An outside range keeps its parentheses; the IPv6 part counts as a piece.
        let outside = format!("({range} + ::/0)");
        assert_eq!(shorten(&outside, 50), "(10.0.0.0/16,10.1.0.0/16,... (+19))");
    }
}
