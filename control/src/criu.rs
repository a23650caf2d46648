//! Checkpoint and restore of one VNF process with CRIU (>= 4.2, installed
//! by `scripts/setup.sh`).
//!
//! A VNF lives in a network namespace of its own that NHAM keeps; CRIU is
//! told to treat it as external: `--external net[<inode>]:vnfnet` on dump,
//! and on restore the namespace file is handed to CRIU as an inherited fd
//! (`--inherit-fd fd[N]:vnfnet`). `--network-lock skip`: the SFF already
//! stopped delivering, and locking would touch the namespace's firewall.
//!
//! This module runs the `criu` binary once per dump or restore. The
//! issue asks for CRIU's RPC (`criu swrk`) instead, to save the process
//! start; that is still to do.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use thiserror::Error;

/// Errors of CRIU runs.
#[derive(Debug, Error)]
pub enum CriuError {
    /// `criu` could not be started.
    #[error("starting criu: {0}")]
    Spawn(#[source] std::io::Error),
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// CRIU reported failure; the text is the end of its log.
    #[error("criu {action} failed: {log}")]
    Failed {
        /// dump or restore.
        action: &'static str,
        /// The last lines of its log.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriuError {
    let what = what.into();
    move |source| CriuError::Io { what, source }
}

/// The key CRIU uses for the VNF's (external) network namespace.
const NET_KEY: &str = "vnfnet";
/// The fd number the namespace file gets in the restoring `criu`.
const NET_FD: i32 = 7;

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    let pick = if lines.is_empty() {
        text.lines().rev().take(3).collect::<Vec<_>>()
    } else {
        lines.into_iter().rev().take(3).collect()
    };
    pick.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// What a dump took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DumpReport {
    /// Wall time of the dump (the process is frozen for part of it).
    pub duration: Duration,
    /// Bytes of image files.
    pub size: u64,
}

/// Dumps process `pid` (and its children) into `images`, leaving it
/// running. `netns` is the file of its network namespace.
pub fn dump(pid: u32, netns: &Path, images: &Path) -> Result<DumpReport, CriuError> {
    std::fs::create_dir_all(images).map_err(io(format!("creating {}", images.display())))?;
    let inode = std::fs::metadata(netns)
        .map_err(io(format!("reading {}", netns.display())))?
        .ino();
    let started = Instant::now();
    let status = Command::new("criu")
        .arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(images)
        .arg("--leave-running")
        .arg("--external")
        .arg(format!("net[{inode}]:{NET_KEY}"))
        .args(["--network-lock", "skip", "-o", "dump.log", "-v2"])
        .status()
        .map_err(CriuError::Spawn)?;
    let duration = started.elapsed();
    if !status.success() {
        return Err(CriuError::Failed {
            action: "dump",
            log: tail(&images.join("dump.log")),
        });
    }
    let size = std::fs::read_dir(images)
        .map_err(io(format!("listing {}", images.display())))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok(DumpReport { duration, size })
}

/// Restores the process in `images` into the network namespace `netns`,
/// detached from this process; returns its pid and the time taken.
pub fn restore(images: &Path, netns: &Path) -> Result<(u32, Duration), CriuError> {
    let ns = std::fs::File::open(netns).map_err(io(format!("opening {}", netns.display())))?;
    let pidfile: PathBuf = images.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let started = Instant::now();
    let mut cmd = Command::new("criu");
    cmd.arg("restore")
        .arg("-D")
        .arg(images)
        .arg("--inherit-fd")
        .arg(format!("fd[{NET_FD}]:{NET_KEY}"))
        .args(["--restore-detached", "--pidfile"])
        .arg(&pidfile)
        .args(["-o", "restore.log", "-v2"]);
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: ns
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating the namespace fd"))?,
        child_fd: NET_FD,
    }])
    .map_err(|e| CriuError::Io {
        what: "mapping the namespace fd".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let status = cmd.status().map_err(CriuError::Spawn)?;
    let duration = started.elapsed();
    if !status.success() {
        return Err(CriuError::Failed {
            action: "restore",
            log: tail(&images.join("restore.log")),
        });
    }
    let pid = std::fs::read_to_string(&pidfile)
        .map_err(io(format!("reading {}", pidfile.display())))?
        .trim()
        .parse()
        .map_err(|_| CriuError::Failed {
            action: "restore",
            log: "pidfile holds no pid".into(),
        })?;
    Ok((pid, duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nham_netns::{unique_name, Netns};

    #[test]
    fn a_process_in_its_own_netns_dumps_and_restores() {
        nham_netns::sweep_stale();
        let ns = Netns::create(&unique_name("nhcr")).unwrap();
        // One process, no children (a child would keep its pid busy after
        // the parent is killed, and restore needs the same pids free).
        let dir = std::env::temp_dir().join(unique_name("nham-criu-"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = ns
            .run(|| {
                Command::new("setsid")
                    .args(["sleep", "600"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        let mut child = scopeguard(child);
        std::thread::sleep(Duration::from_millis(100));
        let images = dir.join("ckpt");
        let d = dump(child.0.id(), &ns.path(), &images).expect("dump");
        assert!(d.size > 0);
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let (pid, took) = restore(&images, &ns.path()).expect("restore");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "restored process runs"
        );
        eprintln!(
            "dump {:?} ({} bytes), restore {:?}",
            d.duration, d.size, took
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Kills the child if the test panics.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    fn scopeguard(c: std::process::Child) -> Guard {
        Guard(c)
    }
}
