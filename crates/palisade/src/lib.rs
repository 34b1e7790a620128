//! The `palisade` command, as a library so benchmarks and tests reach the
//! same code the binary runs.

pub mod cli;
pub mod commands;
pub mod gen;
pub mod input;
pub mod output;
