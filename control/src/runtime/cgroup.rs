//! A cgroup (v2) per VNF: every process of the VNF, forks included, in one
//! group the daemon can account and kill as a whole.
//!
//! Layout: `<cgroup2 mount>/nham-<state tag>/<chain>/<vnf>`. The cgroup2
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

/// One VNF's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    kept: bool,
}

impl Cgroup {
    /// Creates (or takes, if it exists) the group at `path`.
    pub fn create(path: &Path) -> Result<Self, CgroupError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            kept: false,
        })
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` (with all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io(&procs))
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
    let _ = std::fs::remove_dir(dir);
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
