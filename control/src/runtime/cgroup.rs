//! A cgroup (v2) per VNF: every process of the VNF, forks included, in one
//! group the daemon can account and kill as a whole.
//!
//! Layout: `<cgroup2 mount>/nham-<state tag>/<chain>/<vnf>` for a chain's
//! VNFs, `…/<chain>/_sff` for its SFF and `…/_hosted/<id>` for VNFs run
//! for other hosts (`_` is in no chain's or VNF's name). None of it is
//! under `nhamd`'s own group: a service manager that stops `nhamd` and
//! kills whatever is left in its group (systemd's `KillMode=mixed`, the
//! unit in `packaging/`) leaves the chains forwarding and holding, for the
//! next `nhamd` to re-attach to (as Docker's cgroupfs driver keeps
//! containers out of `dockerd`'s unit). The cgroup2
//! hierarchy is found in `/proc/self/mountinfo` (`/sys/fs/cgroup` on a
//! unified host, `/sys/fs/cgroup/unified` on a hybrid one like this
//! project's CI machine). A VNF process is moved in right after it starts,
//! after CRIU restores it and when a restarted daemon adopts it, so
//! membership never depends on CRIU's own cgroup handling.
//!
//! Invariant: [`Cgroup::remove`] kills whatever is still in the group
//! (`cgroup.kill`) before removing it; a group that is kept
//! ([`Cgroup::keep`]) is left as it is for the next daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Errors of cgroup handling.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// A cgroup file could not be read or written.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the cgroup2 hierarchy is mounted, if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... <mount point> <options> - <fstype> <source> <super options>"
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Where the cgroup v1 hierarchy of `controller` is mounted, if one is
/// (a hybrid host's memory, cpu and pids controllers are there).
pub fn cgroup1_root(controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let options = r.nth(1)?;
        if !options.split(',').any(|o| o == controller) {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A VNF's resource limits (`VnfSpec.limits`; `None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory, bytes (`memory.max`).
    pub memory_max: Option<u64>,
    /// CPU, thousandths of a CPU per 100 ms period (`cpu.max`).
    pub cpu_max_millicpus: Option<u32>,
    /// Processes and threads (`pids.max`).
    pub pids_max: Option<u32>,
}

/// A controller, its cgroup v2 file and value, its cgroup v1 files and
/// values.
type LimitFiles = (
    &'static str,
    (&'static str, String),
    Vec<(&'static str, String)>,
);

/// The CPU period limits are set over, µs (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// Whether it limits nothing.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// Per controller, the files that set the limits and their values:
    /// cgroup v2's, and cgroup v1's for a controller v2 does not have here.
    fn files(&self) -> Vec<LimitFiles> {
        let mut out = Vec::new();
        if let Some(m) = self.memory_max {
            out.push((
                "memory",
                ("memory.max", m.to_string()),
                vec![("memory.limit_in_bytes", m.to_string())],
            ));
        }
        if let Some(c) = self.cpu_max_millicpus {
            let quota = u64::from(c) * CPU_PERIOD_US / 1000;
            out.push((
                "cpu",
                ("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
                vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            ));
        }
        if let Some(p) = self.pids_max {
            out.push((
                "pids",
                ("pids.max", p.to_string()),
                vec![("pids.max", p.to_string())],
            ));
        }
        out
    }
}

/// One VNF's cgroup: its cgroup2 group, and the cgroup v1 groups that
/// carry its limits on a hybrid host.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// v1 groups (same relative path, one per controller it limits).
    v1: Vec<PathBuf>,
    kept: bool,
}

impl Cgroup {
    /// Creates (or takes, if it exists) the group at `path`.
    pub fn create(path: &Path) -> Result<Self, CgroupError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            v1: Vec::new(),
            kept: false,
        })
    }

    /// Creates (or takes) the group `rel` under the cgroup2 hierarchy at
    /// `root`, with `limits`: in cgroup v2 where the hierarchy has the
    /// controller (enabled on the way down from `root`), else in the
    /// controller's v1 hierarchy at the same relative path. A limit that
    /// can be set nowhere is an error (a VNF never runs unbounded when its
    /// spec bounds it).
    pub fn create_limited(root: &Path, rel: &Path, limits: &Limits) -> Result<Self, CgroupError> {
        let mut g = Self::create(&root.join(rel))?;
        // Kept until its limits are set: on an error the group must not be
        // killed (it may hold a live VNF being re-attached).
        g.keep();
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for (controller, v2, v1) in limits.files() {
            if available.split_whitespace().any(|c| c == controller) {
                // "+memory" in each subtree_control from the root (a no-op
                // where the service manager enabled it) down to the VNF's
                // parent.
                let mut dir = root.to_path_buf();
                let parts: Vec<_> = rel.components().collect();
                let mut below = vec![dir.clone()];
                for part in &parts[..parts.len().saturating_sub(1)] {
                    dir.push(part);
                    below.push(dir.clone());
                }
                for d in below {
                    let control = d.join("cgroup.subtree_control");
                    std::fs::write(&control, format!("+{controller}")).map_err(io(&control))?;
                }
                let f = g.path.join(v2.0);
                std::fs::write(&f, v2.1).map_err(io(&f))?;
            } else {
                let mount = cgroup1_root(controller).ok_or_else(|| CgroupError::Io {
                    path: format!("{controller} controller"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "neither cgroup2 nor a cgroup v1 hierarchy has it on this host",
                    ),
                })?;
                let dir = mount.join(rel);
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                g.v1.push(dir.clone());
                for (file, value) in v1 {
                    let f = dir.join(file);
                    std::fs::write(&f, value).map_err(io(&f))?;
                }
            }
        }
        g.unkeep();
        Ok(g)
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup v1 groups that carry its limits (on a hybrid host).
    pub fn v1_groups(&self) -> &[PathBuf] {
        &self.v1
    }

    /// Moves process `pid` (with all its threads) into the group (and its
    /// v1 groups).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in std::iter::once(&self.path).chain(&self.v1) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io(&procs))?;
        }
        Ok(())
    }

    /// Moves process `pid` and every descendant of it into the group (a
    /// VNF CRIU restored: its whole tree starts in the restorer's group).
    pub fn add_tree(&self, pid: u32) -> Result<(), CgroupError> {
        for p in nham_netns::process_tree(pid) {
            self.add(p)?;
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        Ok(std::fs::read_to_string(&procs)
            .map_err(io(&procs))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Leaves the group in place when this value is dropped.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Undoes [`Cgroup::keep`].
    pub fn unkeep(&mut self) {
        self.kept = false;
    }

    /// Kills every process in the group and removes it (waiting up to a
    /// second for the processes to leave).
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else {
            for pid in self.procs().unwrap_or_default() {
                let _ = super::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        // The v1 groups (empty once the processes have gone), and their
        // parents left empty (a chain's, the daemon's).
        for dir in std::mem::take(&mut self.v1) {
            while std::fs::remove_dir(&dir).is_err_and(|e| e.kind() != std::io::ErrorKind::NotFound)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            for parent in dir.ancestors().skip(1).take(2) {
                let _ = std::fs::remove_dir(parent);
            }
        }
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // Busy: a dying process (or a zombie) is still counted.
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(io(&self.path)(e)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.remove();
        }
    }
}

/// Removes the directory `dir` and the empty groups under it (what is left
/// of a chain once its VNFs' groups are gone).
pub fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    // A group whose last process just died may be busy for a moment.
    let deadline = Instant::now() + Duration::from_millis(200);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.raw_os_error() != Some(nix::libc::EBUSY) || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills every process in the tree of groups at `dir` (`cgroup.kill` kills
/// the descendants' too), waits up to a second for them to leave, and
/// removes the tree: what a test lab does with a host whose `nhamd` was
/// killed and could not clean up after itself.
pub fn kill_tree(dir: &Path) {
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        let _ = std::fs::write(&kill, "1");
        let events = dir.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline
            && std::fs::read_to_string(&events).is_ok_and(|e| e.contains("populated 1"))
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    remove_tree(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_moved_in_and_killed_with_the_group() {
        let Some(root) = cgroup2_root() else {
            eprintln!("no cgroup2 hierarchy here; nothing to test");
            return;
        };
        let path = root.join(nham_netns::unique_name("nham-test-"));
        let mut g = Cgroup::create(&path).expect("create");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        g.add(child.id()).expect("add");
        assert_eq!(g.procs().expect("procs"), vec![child.id()]);
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        assert!(own.contains(&format!("0::/{rel}")), "{own}");
        let remover = std::thread::spawn(move || g.remove());
        let status = child.wait().expect("wait");
        assert!(!status.success(), "killed by cgroup.kill");
        remover.join().unwrap().expect("removed");
        assert!(!path.exists());
    }
}
