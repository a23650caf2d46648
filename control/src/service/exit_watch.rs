//! The Failure Detector's word of a crash (driver): a watcher per VNF
//! process and MR-AA member waits for its exit (the BPF exit watch's early
//! word, the pidfd as the authority and the fallback), then hands it to
//! the Failure Recovery with the moment it exited and the moment it was
//! known.

#[allow(unused_imports)]
use super::*;

impl Daemon {
    /// Watches VNF `vnf` of `chain` (incarnation `incarnation`) through its
    /// pidfd.
    pub(super) fn watch(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        incarnation: u64,
        pidfd: OwnedFd,
    ) {
        self.watch_member(chain, vnf, 0, incarnation, pidfd);
    }

    /// Watches MR-AA member `member` of VNF `vnf` (0: the VNF's own
    /// process, as [`watch`](Self::watch)).
    pub(super) fn watch_member(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        member: usize,
        incarnation: u64,
        pidfd: OwnedFd,
    ) {
        let daemon = self.clone();
        let pid = crate::runtime::exits::pid_of(&pidfd);
        let early = pid.and_then(|p| self.early.watch(p));
        tokio::spawn(async move {
            // A pidfd becomes readable when the process exits; the exit
            // watch (BPF) says so earlier, before its sockets are released.
            // Wait for either on a blocking thread (the safe way to poll a
            // raw fd here).
            let exited = tokio::task::spawn_blocking(move || loop {
                let mut fds = vec![rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                if let Some(e) = &early {
                    fds.push(rustix::event::PollFd::new(
                        e.as_ref(),
                        rustix::event::PollFlags::IN,
                    ));
                }
                match rustix::event::poll(&mut fds, None) {
                    Ok(n) if n > 0 => {
                        let pidfd_ready = !fds[0].revents().is_empty();
                        drop(fds);
                        // When it exited (the kernel's word, else now),
                        // and when we knew.
                        let now = Instant::now();
                        let (exited, noticed) =
                            early.as_ref().and_then(|e| e.at()).unwrap_or((now, now));
                        let reap = move || {
                            // Reap it, waiting if need be: a VNF killed
                            // while CRIU had it seized stays a zombie of
                            // CRIU's until the failed dump lets go of it.
                            crate::runtime::reap(&pidfd);
                        };
                        if pidfd_ready {
                            reap();
                        } else {
                            // Recovery goes on while the exit finishes
                            // (its sockets' release): nothing it does needs
                            // the old process gone.
                            std::thread::spawn(reap);
                        }
                        return Some(Exited { exited, noticed });
                    }
                    Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return None,
                }
            })
            .await;
            if let Some(p) = pid {
                daemon.early.forget(p);
            }
            if let Ok(Some(e)) = exited {
                daemon.on_exit(&chain, &vnf, member, incarnation, e).await;
            }
        });
    }

    /// Watches the MR-AA members a chain started with.
    pub(super) fn watch_members(self: &Arc<Self>, runtime: &mut ChainRuntime) {
        for (hop, k, fd) in std::mem::take(&mut runtime.member_pidfds) {
            let v = &runtime.vnfs[hop];
            let inc = v.members[k - 1].recovery.incarnation();
            self.watch_member(runtime.plan.name.clone(), v.plan.name.clone(), k, inc, fd);
        }
    }
}
