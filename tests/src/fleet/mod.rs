//! The fleet benchmark (`benches/cluster.sh`, `make bench`): N simulated nodes
//! against the real API server, counted from its audit log. See
//! benches/README.md for the method.

pub mod agents;
pub mod count;
pub mod procstat;
pub mod progress;
pub mod report;
mod run;

pub use agents::{Fleet, FleetKind};
pub use run::{BenchOptions, BenchResult, Operation, is_result_file, run};
