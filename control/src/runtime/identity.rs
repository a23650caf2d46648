//! Who a VNF runs as and what it may do: its user, its group and the only
//! capabilities it keeps (`VnfSpec.user`, `.group`, `.capabilities`).
//!
//! The VNF's command is started through `setpriv` (util-linux: a
//! well-kept tool rather than `unsafe` code between fork and exec here),
//! which sets the ids, clears supplementary groups and leaves the
//! capability sets (bounding, inheritable, ambient, and with them
//! permitted and effective) to the listed ones, then execs the command in
//! place (same pid). CRIU dumps and restores those credentials with the
//! process: a restored VNF has the uid, gid and capabilities it had.
//!
//! Decisions only (what `setpriv` is given, whether this host can
//! checkpoint another user's process); the spawn does the I/O.

use std::str::FromStr;

use caps::Capability;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a VNF keeps when its spec lists no capabilities: raw packet
/// sockets (how a VNF reads and writes NSH frames on its interface), and
/// what a checkpoint of it takes ([`CHECKPOINT_CAPABILITY`]).
pub const DEFAULT_CAPABILITIES: &[&str] = &["net_raw", CHECKPOINT_CAPABILITY];

/// What a VNF must keep to be checkpointed: CRIU's parasite code runs in
/// the VNF, as the VNF, and needs a `/proc` of the VNF's own PID
/// namespace; the host's `/proc` is not (each VNF is PID 1 of a namespace
/// of its own), so the parasite mounts one, which takes `CAP_SYS_ADMIN`
/// ("can't dump unprivileged task whose /proc doesn't belong to it").
/// A VNF without it runs, unprotected. (A mount namespace per VNF with its
/// own `/proc` would lift this; CRIU would then have to dump and restore
/// that namespace too: not done yet.)
pub const CHECKPOINT_CAPABILITY: &str = "sys_admin";

/// Errors of identity resolution.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    /// No such user on this host.
    #[error("user {0:?}: no such user on this host")]
    NoUser(String),
    /// No such group on this host.
    #[error("group {0:?}: no such group on this host")]
    NoGroup(String),
    /// Not a capability Linux knows.
    #[error("capability {0:?} is not one Linux knows (for example net_raw, net_admin)")]
    NoCapability(String),
}

/// A VNF's user, group and capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Its uid (`None`: root, nhamd's own).
    pub uid: Option<u32>,
    /// Its gid (`None`: root's).
    pub gid: Option<u32>,
    /// Its only capabilities, lower-case without `cap_` (`net_raw`).
    pub capabilities: Vec<String>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            uid: None,
            gid: None,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// `name`'s capability, lower-case without `cap_`, if Linux knows it
/// (`NET_RAW`, `cap_net_raw` and `net_raw` are the same).
pub fn capability(name: &str) -> Result<String, IdentityError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full)
        .map(|c| c.to_string()[4..].to_ascii_lowercase())
        .map_err(|_| IdentityError::NoCapability(name.to_string()))
}

/// A user given by name or number: its uid and primary gid (a number not
/// in the user database stands for itself, with gid = uid).
pub fn user(name: &str) -> Result<(u32, u32), IdentityError> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(match nix::unistd::User::from_uid(uid.into()) {
            Ok(Some(u)) => (uid, u.gid.as_raw()),
            _ => (uid, uid),
        });
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        _ => Err(IdentityError::NoUser(name.to_string())),
    }
}

/// A group given by name or number: its gid.
pub fn group(name: &str) -> Result<u32, IdentityError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(IdentityError::NoGroup(name.to_string())),
    }
}

impl Identity {
    /// From a spec's fields (empty: the defaults), names resolved on this
    /// host.
    pub fn resolve(
        user_name: &str,
        group_name: &str,
        caps: &[String],
    ) -> Result<Self, IdentityError> {
        let (uid, primary) = match user_name.trim() {
            "" => (None, None),
            u => {
                let (uid, gid) = user(u)?;
                (Some(uid), Some(gid))
            }
        };
        let gid = match group_name.trim() {
            "" => primary,
            g => Some(group(g)?),
        };
        let mut capabilities = if caps.is_empty() {
            Self::default().capabilities
        } else {
            caps.iter()
                .map(|c| capability(c))
                .collect::<Result<Vec<_>, _>>()?
        };
        capabilities.sort();
        capabilities.dedup();
        Ok(Self {
            uid: uid.filter(|&u| u != 0),
            gid: gid.filter(|&g| g != 0),
            capabilities,
        })
    }

    /// Whether CRIU can checkpoint it (it keeps [`CHECKPOINT_CAPABILITY`]).
    pub fn checkpointable(&self) -> bool {
        self.capabilities.iter().any(|c| c == CHECKPOINT_CAPABILITY)
    }

    /// Whether it is root's (uid and gid 0), as nhamd is.
    pub fn is_root(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }

    /// `setpriv`'s arguments, up to and including the `--` before the
    /// command.
    pub fn setpriv_args(&self) -> Vec<String> {
        let set = std::iter::once("-all".to_string())
            .chain(self.capabilities.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = Vec::new();
        if let Some(uid) = self.uid {
            args.push(format!("--reuid={uid}"));
        }
        if let Some(gid) = self.gid {
            args.push(format!("--regid={gid}"));
        }
        if !self.is_root() {
            args.push("--clear-groups".into());
        }
        args.push(format!("--inh-caps={set}"));
        args.push(format!("--ambient-caps={set}"));
        args.push(format!("--bounding-set={set}"));
        args.push("--".into());
        args
    }
}

/// Whether CRIU, run by this process, can checkpoint a process of another
/// user: reading its resource limits (`prlimit`) takes `CAP_SYS_RESOURCE`
/// unless every uid and gid of it is ours. A root without it (some
/// sandboxes) cannot protect a VNF that runs as another user.
pub fn can_checkpoint_other_users() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, Capability::CAP_SYS_RESOURCE).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_named_either_way_and_unknown_ones_refused() {
        assert_eq!(capability("NET_RAW").unwrap(), "net_raw");
        assert_eq!(capability("cap_net_admin").unwrap(), "net_admin");
        assert_eq!(capability("CAP_BPF").unwrap(), "bpf");
        assert_eq!(
            capability("net_rawr"),
            Err(IdentityError::NoCapability("net_rawr".into()))
        );
    }

    #[test]
    fn setpriv_is_told_the_ids_and_the_only_capabilities() {
        let root = Identity::resolve("", "", &[]).unwrap();
        assert!(root.is_root());
        assert!(root.checkpointable());
        assert_eq!(
            root.setpriv_args(),
            [
                "--inh-caps=-all,+net_raw,+sys_admin",
                "--ambient-caps=-all,+net_raw,+sys_admin",
                "--bounding-set=-all,+net_raw,+sys_admin",
                "--"
            ]
        );
        let nobody =
            Identity::resolve("65534", "", &["NET_ADMIN".into(), "net_raw".into()]).unwrap();
        assert_eq!(nobody.uid, Some(65534));
        assert_eq!(
            nobody.setpriv_args()[..3],
            ["--reuid=65534", "--regid=65534", "--clear-groups"]
        );
        assert!(nobody.setpriv_args()[3].ends_with("+net_admin,+net_raw"));
        assert!(!nobody.checkpointable());
        assert_eq!(
            Identity::resolve("no-such-user-here", "", &[]),
            Err(IdentityError::NoUser("no-such-user-here".into()))
        );
        assert!(matches!(
            Identity::resolve("", "no-such-group-here", &[]),
            Err(IdentityError::NoGroup(_))
        ));
    }
}
