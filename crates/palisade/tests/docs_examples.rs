//! Every ```console block in docs/ is run: lines starting with `$ ` are
//! commands (run from the repository root, `palisade` being the binary under
//! test), the lines after them are the exact expected stdout.

use std::path::Path;
use std::process::Command;

struct Example {
    file: String,
    command: String,
    expected: String,
}

fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(root.join("docs")).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_block = false;
        let mut current: Option<Example> = None;
        for line in text.lines() {
            if !in_block {
                in_block = line.trim() == "```console";
                continue;
            }
            if line.trim() == "```" || line.starts_with("$ ") {
                out.extend(current.take());
            }
            if line.trim() == "```" {
                in_block = false;
            } else if let Some(cmd) = line.strip_prefix("$ ") {
                current =
                    Some(Example { file: f.display().to_string(), command: cmd.to_string(), expected: String::new() });
            } else if let Some(ex) = current.as_mut() {
                ex.expected.push_str(line);
                ex.expected.push('\n');
            }
        }
    }
    out
}

#[test]
fn documented_commands_print_what_the_docs_show() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = env!("CARGO_BIN_EXE_palisade");
    let examples = examples();
    assert!(examples.len() >= 8, "expected documented examples, found {}", examples.len());
    let mut failures = Vec::new();
    for ex in &examples {
        let command = ex.command.replacen("palisade", bin, 1).replace("| palisade", &format!("| {bin}"));
        let out = Command::new("sh").arg("-c").arg(&command).current_dir(&root).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let norm = |s: &str| s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n").trim_end().to_string();
        if norm(&stdout) != norm(&ex.expected) {
            failures.push(format!(
                "{}: `{}`\n--- expected\n{}\n--- got\n{}",
                ex.file,
                ex.command,
                norm(&ex.expected),
                norm(&stdout)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} documented examples differ:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
}
