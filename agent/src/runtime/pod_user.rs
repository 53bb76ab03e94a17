//! Whose user the process runtime runs a pod's processes as: a user and
//! group of the pod's own by default when the agent is root (derived from
//! the pod's IP, so it survives an agent restart), the `securityContext`'s
//! ids when given, and the pod's directories made that user's.

use std::path::Path;

use keel_proto::api::core::POD_UID_BASE;

use super::{ContainerConfig, RuntimeError, Sandbox};

/// Whose user a pod's processes run as when its spec does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodUsers {
    /// A user and group of the pod's own when the agent runs as root (the
    /// agent's own user otherwise, as it cannot switch).
    #[default]
    PerPod,
    /// The agent's own user: no isolation from the node or between pods.
    Agent,
    /// One user for every pod (its group the same number).
    Fixed(u32),
}

impl std::str::FromStr for PodUsers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-pod" => Ok(PodUsers::PerPod),
            "agent" => Ok(PodUsers::Agent),
            n => n
                .parse()
                .map(PodUsers::Fixed)
                .map_err(|_| format!("{n:?}: expected per-pod, agent or a numeric user id")),
        }
    }
}

/// The user id of the pod whose sandbox has address `ip` under
/// [`PodUsers::PerPod`].
pub fn pod_uid(ip: std::net::Ipv4Addr) -> u32 {
    POD_UID_BASE + (u32::from(ip) & 0xFF_FFFF)
}

/// The user and group a process of the pod runs as; None: the agent's own.
pub(super) fn ids_for(
    users: PodUsers,
    s: &Sandbox,
    c: &ContainerConfig,
) -> Result<Option<(u32, u32)>, RuntimeError> {
    // SAFETY: geteuid(2) and getegid(2) cannot fail.
    let (me, my_group) = unsafe { (libc::geteuid(), libc::getegid()) };
    let default = match users {
        PodUsers::PerPod if me == 0 => Some(pod_uid(s.ip)),
        PodUsers::Fixed(u) => Some(u),
        _ => None,
    };
    let uid = c.run_as_user.or(default);
    let gid = c.run_as_group.or(uid);
    let ids = match (uid, gid) {
        (None, None) => return Ok(None),
        (u, g) => (u.unwrap_or(me), g.unwrap_or(my_group)),
    };
    if me != 0 && ids != (me, my_group) {
        return Err(RuntimeError::CannotRun(format!(
            "cannot run as user {} group {}: the agent runs as user {me}, not root",
            ids.0, ids.1
        )));
    }
    Ok(Some(ids))
}

/// Makes `dir` the pod user's own (mode 0700) when pods run as another
/// user than the agent.
pub(super) fn give(dir: &Path, ids: Option<(u32, u32)>) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let Some((uid, gid)) = ids else {
        return Ok(());
    };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| RuntimeError::Setup(format!("giving {} to user {uid}: {e}", dir.display())))
}
