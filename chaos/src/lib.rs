//! The chaos harness: not built yet, see issue 6.
