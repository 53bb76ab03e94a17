//! Client workloads that record histories for the checkers.

pub mod register;
