//! Starting a VNF's command in its namespace, and knowing it listens.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{process, RuntimeError, VNF_IFACE};

/// The last `lines` lines of the log file `path` (empty if unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A VNF command to start (see `chain::VnfRuntime::spawn`).
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The VNF's name (for errors and logs).
    pub vnf: String,
    /// Its command as the spec gave it (for errors).
    pub command: Vec<String>,
    /// Its command line, placeholders replaced.
    pub argv: Vec<String>,
    /// Its environment, on top of ours.
    pub env: std::collections::BTreeMap<String, String>,
    /// The file of its network namespace.
    pub netns: PathBuf,
    /// That namespace's name (`NHAM_NETNS`).
    pub netns_name: String,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its cgroup, if any.
    pub cgroup: Option<PathBuf>,
    /// Its cgroup v1 groups (limits on a hybrid host).
    pub cgroup_v1: Vec<PathBuf>,
    /// Who it runs as, with what capabilities.
    pub identity: super::identity::Identity,
}

/// Whether `program` names an executable file (itself, or in `PATH`).
fn executable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return is_exe(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| is_exe(&d.join(program))))
}

impl Spawn {
    /// The same command, in the namespace bound at `netns` (a replica's
    /// or member's place, or the VNF's after a failover swapped them).
    pub fn placed(mut self, netns: &Path) -> Self {
        self.netns_name = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.netns = netns.to_path_buf();
        self
    }

    /// Starts the command and waits until it listens on a packet socket;
    /// returns its pid. One that exits first, or never opens one, did not
    /// start: `FAILED_PRECONDITION`, naming the VNF and its command, with
    /// the end of its log (nothing is taken as ready).
    pub fn run(self) -> Result<u32, RuntimeError> {
        let log_err = |e: std::io::Error| RuntimeError::io(self.log.display())(e);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_err)?;
        let err = out.try_clone().map_err(log_err)?;
        if !executable(&self.argv[0]) {
            return Err(RuntimeError::NotStarted {
                what: format!("VNF {}", self.vnf),
                why: format!(
                    "{:?}: {}: no such executable file (itself or in PATH)",
                    self.command, self.argv[0]
                ),
            });
        }
        // Its working directory is its user's.
        if let Some(uid) = self.identity.uid {
            let gid = self.identity.gid.map(nix::unistd::Gid::from_raw);
            nix::unistd::chown(&self.cwd, Some(nix::unistd::Uid::from_raw(uid)), gid)
                .map_err(|e| RuntimeError::io(self.cwd.display())(e.into()))?;
        }
        let setpriv = self.identity.setpriv_args();
        let (argv, env, ns, cwd) = (
            self.argv.clone(),
            self.env.clone(),
            self.netns_name.clone(),
            self.cwd.clone(),
        );
        let child = nham_netns::run_in(&self.netns, move || {
            // The VNF at the ordinary priority, whatever this thread's (a
            // recovery runs urgent or in the background).
            let _ = rustix::process::setpriority_process(None, 0);
            // Pid 1 of a PID namespace of its own (see
            // [`own_pid_namespace_for_children`]).
            own_pid_namespace_for_children()?;
            // setpriv sets the ids and capabilities, then execs the VNF in
            // place (see `identity`).
            Command::new("setpriv")
                .args(setpriv)
                .args(&argv)
                .envs(env)
                .env("NHAM_IFACE", VNF_IFACE)
                .env("NHAM_NETNS", &ns)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .current_dir(&cwd)
                .spawn()
        })?
        .map_err(|e| RuntimeError::NotStarted {
            what: format!("VNF {}", self.vnf),
            why: format!("{:?}: {e}", self.command),
        })?;
        let pid = child.id();
        // In its groups at once, before it can fork much.
        for cg in self.cgroup.iter().chain(&self.cgroup_v1) {
            let procs = cg.join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                tracing::warn!(vnf = self.vnf, "{}: {e}", procs.display());
            }
        }
        // The Child handle goes; the pidfd watcher reaps the process.
        drop(child);
        if let Err(e) = wait_for_packet_socket(pid, &self.command) {
            let _ = process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            // No watcher took it: reap it here.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            return Err(RuntimeError::NotStarted {
                what: format!("VNF {}", self.vnf),
                why: format!(
                    "{:?} {}; the end of its log ({}):\n{}",
                    self.command,
                    match e {
                        RuntimeError::NotStarted { why, .. } => why,
                        e => e.to_string(),
                    },
                    self.log.display(),
                    log_tail(&self.log, 10)
                ),
            });
        }
        Ok(pid)
    }
}

/// Makes the calling thread's next child the first process (pid 1) of a
/// new PID namespace. Every VNF runs so: CRIU then dumps and restores the
/// namespace with it, and a restored VNF gets a pid of its own instead of
/// needing the old one free (no clash with a zombie or a second copy).
/// The thread is a throw-away one (`pid_ns_for_children` is per thread).
pub fn own_pid_namespace_for_children() -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(std::io::Error::from)
}

/// Waits until process `pid` (command `what`) has a packet socket open in
/// its namespace: replay must not start before the VNF listens, or the
/// first frames would go nowhere.
pub fn wait_for_packet_socket(pid: u32, what: &[String]) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let not_started = |why: String| RuntimeError::NotStarted {
        what: format!("{what:?}"),
        why,
    };
    loop {
        let sockets = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0);
        if sockets > 0 && process::is_alive(pid) {
            return Ok(());
        }
        if !process::is_alive(pid) {
            return Err(not_started(
                "exited before it opened a packet socket".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(not_started(format!(
                "opened no packet socket in {START_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// How long a VNF command gets to open its packet socket when started.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
