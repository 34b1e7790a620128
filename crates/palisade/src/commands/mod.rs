pub mod analyze;
pub mod diff;
pub mod explain;
pub mod lint;
