//! Checkers over recorded histories. So far: linearizability of register
//! histories (`linearizable`); the watch, lost-write and convergence
//! checkers of the chaos harness come next (issue 6).

pub mod linearizable;
