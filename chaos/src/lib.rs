//! Fault injection against real Keel clusters: the process cluster (spawn,
//! kill, pause, restart members as child processes) that `keel up`, the
//! benchmarks and the end-to-end tests share, and the chaos harness built on
//! it (`keel chaos run`): per-link proxies, nemeses on a seeded schedule,
//! recorded workloads, checkers and the report; and differential testing
//! against a real etcd (`keel chaos diff`).

pub mod check;
pub mod cluster;
pub mod config;
pub mod diff;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod sim;
pub mod wait;
pub mod workload;

pub use cluster::{ClusterError, Flavor, ProcessCluster, bootstrap_token, free_port};
pub use wait::poll;
