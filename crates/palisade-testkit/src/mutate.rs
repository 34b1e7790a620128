//! Damage for fuzzing parsers with proptest on stable Rust: real inputs
//! with bytes replaced, inserted and cut, and lines duplicated.

use proptest::prelude::*;

/// Characters that change YAML's, JSON's and key=value lists' structure.
pub const SPECIAL: &[u8] = b":- \n\t{}[],\"'&*!|>#%@`0a~.;=/";

#[derive(Debug, Clone)]
pub enum Mutation {
    Replace { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Cut { at: usize, len: usize },
    DuplicateLine { at: usize },
}

/// One damage, anywhere in the input.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(SPECIAL);
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
        (any::<usize>(), byte).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), 1..40usize).prop_map(|(at, len)| Mutation::Cut { at, len }),
        any::<usize>().prop_map(|at| Mutation::DuplicateLine { at }),
    ]
}

/// `text` with `mutations` applied in order (positions wrap around).
pub fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Replace { at, byte } if !bytes.is_empty() => bytes[at % n] = byte,
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Cut { at, len } if !bytes.is_empty() => {
                let start = at % n;
                bytes.drain(start..(start + len).min(bytes.len()));
            }
            Mutation::DuplicateLine { at } => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                if !lines.is_empty() {
                    let k = at % lines.len();
                    let mut out: Vec<&str> = lines[..=k].to_vec();
                    out.extend(&lines[k..]);
                    bytes = out.concat().into_bytes();
                }
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).to_string()
}
