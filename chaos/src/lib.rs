//! Fault injection against real Keel clusters. So far: the process cluster
//! (spawn, kill, pause, restart members as child processes) that `keel up`,
//! the benchmarks and the end-to-end tests share. The nemeses, workloads and
//! checkers of the chaos harness build on it (issue 6).

pub mod check;
pub mod cluster;
pub mod wait;
pub mod workload;

pub use cluster::{ClusterError, Flavor, ProcessCluster, free_port};
pub use wait::poll;
