//! Checkers over recorded histories: linearizability of register histories
//! (`linearizable`), no acknowledged write lost (`lost_write`), no two
//! leaders in one term (`leaders`), watch completeness (`watch`) and the
//! control plane's convergence after healing (`converge`). Each is a plain
//! function over plain values, unit-tested on hand-made inputs.

pub mod converge;
pub mod leaders;
pub mod linearizable;
pub mod lost_write;
pub mod watch;
