//! Test-only crash points: `keel master --failpoint-crash-at <name>` makes
//! the process abort (no cleanup, no flush: as a SIGKILL) when it reaches the
//! named step of a multi-step change, so tests can show that each step is
//! crash-safe (snapshot install, `--force-new-cluster`). One name per
//! process; set once at start and read-only after, hence a process global.

use std::sync::OnceLock;

static CRASH_AT: OnceLock<String> = OnceLock::new();

/// The steps that have a crash point, in the order they run.
pub const POINTS: [&str; 5] = [
    "install-before-kv",
    "install-after-kv",
    "force-after-replay",
    "force-after-build",
    "force-after-move-old",
];

/// Arms the crash point `name` for this process (test only).
pub fn arm(name: &str) -> Result<(), String> {
    if !POINTS.contains(&name) {
        return Err(format!(
            "unknown crash point {name:?}; known: {}",
            POINTS.join(", ")
        ));
    }
    tracing::warn!(
        point = name,
        "test-only failpoint on: this process aborts at that step"
    );
    let _ = CRASH_AT.set(name.to_string());
    Ok(())
}

/// Aborts the process here if the crash point `name` is armed.
pub fn crash_point(name: &str) {
    if CRASH_AT.get().is_some_and(|p| p == name) {
        eprintln!("failpoint: crashing at {name}");
        std::process::abort();
    }
}
