//! Shared helpers for Keel end-to-end tests.
