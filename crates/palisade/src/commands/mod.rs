pub mod analyze;
pub mod bench;
pub mod bench_dataplane;
pub mod diff;
pub mod explain;
pub mod lab;
pub mod lab_daemon;
pub mod lint;
