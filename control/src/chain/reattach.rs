//! Attaching to a chain an earlier daemon left running: its SFF process
//! (with the packets it holds), namespaces and the VNF processes still
//! alive.

#[allow(unused_imports)]
use super::*;

impl ChainRuntime {
    /// Attaches to what an earlier daemon left running for chain `plan`
    /// (`record`): the SFF process with the packets it holds, the
    /// namespaces, the VNF processes still alive. A checkpoint that daemon
    /// left half-done is settled (committed if the store has its image,
    /// failed otherwise; a VNF it froze is thawed). Returns the runtime and,
    /// per VNF, a pidfd if its process was adopted, or `None` if it must be
    /// recovered (it died meanwhile, or was being recovered).
    ///
    /// Fails (and leaves everything as it was) if the SFF process or a
    /// namespace is gone.
    pub fn reattach(
        record: &ChainRecord,
        plan: ChainPlan,
        state: &StateOptions,
    ) -> Result<(Self, Vec<Option<OwnedFd>>), ControlError> {
        let gone = |what: String| ControlError::FailedPrecondition(what);
        if record.vnfs.len() != plan.vnfs.len() {
            return Err(gone("the record does not match the spec".into()));
        }
        if let Some(v) = plan.vnfs.iter().find(|v| v.host.is_some()) {
            return Err(gone(format!(
                "VNF {} ran on another host: it stopped with the nhamd that placed it",
                v.name
            )));
        }
        if plan
            .vnfs
            .iter()
            .zip(&record.vnfs)
            .any(|(v, r)| (v.mechanism == Some(Mechanism::MultiActive)) == r.members.is_empty())
        {
            return Err(gone(
                "an MR-AA VNF's members are not recorded (a record of an older nhamd)".into(),
            ));
        }
        let client = SffClient::connect(&record.sff_socket)
            .map_err(|e| gone(format!("its SFF does not answer: {e}")))?;
        let status = client
            .status()
            .map_err(|e| gone(format!("its SFF does not answer: {e}")))?;
        if status.pid != record.sff_pid || status.hops.len() != plan.vnfs.len() {
            return Err(gone(format!(
                "the SFF on {} is not the chain's (pid {}, {} hops)",
                record.sff_socket.display(),
                status.pid,
                status.hops.len()
            )));
        }
        let sff = Arc::new(client);
        // An SFF an older nhamd left in its own group moves out of it now
        // (one already in its group stays: the write is a no-op).
        if let Some(dir) = state.sff_cgroup(&plan.name) {
            crate::runtime::join_cgroup(&dir, record.sff_pid);
        }
        let work = state.scratch.join(&plan.name);
        std::fs::create_dir_all(&work).map_err(ControlError::io(work.display()))?;
        let mut vnfs = Vec::new();
        for (v, r) in plan.vnfs.iter().zip(&record.vnfs) {
            let mut netns = Netns::adopt(&r.netns)?;
            // Until this runtime is complete, a failure must not delete it.
            netns.keep();
            vnfs.push(VnfRuntime {
                plan: v.clone(),
                netns: Some(netns),
                remote: None,
                remote_previous: None,
                remote_target: None,
                remote_replica: None,
                process: None,
                argv: r.argv.clone(),
                log: r.log.clone(),
                cwd: state.vnf_cwd(&plan.name, &v.name)?,
                // Its limits failing now does not fail the re-attach of a
                // live VNF: it stays in its group, said.
                cgroup: match state.vnf_cgroup(&plan.name, &v.name, &v.limits) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(chain = plan.name, vnf = v.name, "{e}");
                        state.vnf_cgroup(&plan.name, &v.name, &Default::default())?
                    }
                }
                .map(|mut c| {
                    // Until this runtime is complete, as the namespace.
                    c.keep();
                    c
                }),
                replica: match (&r.replica_netns, &r.replica_sff_iface) {
                    (Some(n), Some(iface)) => Some(ReplicaPlace {
                        netns: Netns::adopt(n).map(|mut ns| {
                            ns.keep();
                            // The last daemon's stopped copy: the next
                            // checkpoint makes a new one.
                            nham_netns::kill_processes_in(&ns.path());
                            ns
                        })?,
                        sff_iface: iface.clone(),
                    }),
                    _ => None,
                },
                members: r
                    .members
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let mut netns = Netns::adopt(&m.netns)?;
                        netns.keep();
                        Ok(MemberPlace {
                            netns,
                            sff_iface: m.sff_iface.clone(),
                            process: None,
                            cwd: state.vnf_cwd(&plan.name, &member_dir(&v.name, k + 1))?,
                            recovery: FailureRecovery::found(Phase::Failed, 0, Counters::default()),
                        })
                    })
                    .collect::<Result<_, ControlError>>()?,
                remote_members: Vec::new(),
                member_turn: Arc::default(),
                standby_turn: Arc::default(),
                failure_announced: None,
                agent: None,
                checkpoints: r.checkpoints,
                last_committed: None,
                sff_iface: r.sff_iface.clone(),
                recovery: FailureRecovery::found(
                    Phase::Failed,
                    0,
                    Counters {
                        failures: r.failures,
                        recoveries: r.recoveries,
                        ..Counters::default()
                    },
                ),
            });
        }
        let mut runtime = Self {
            id: record.id,
            plan,
            vnfs,
            sff: Some(sff.clone()),
            sff_process: Some(SffProcess::adopt(record.sff_pid, record.sff_socket.clone())),
            work,
            detached: true,
            member_pidfds: Vec::new(),
            lost_members: Vec::new(),
        };
        let mut pidfds = Vec::new();
        for (hop, (v, r)) in runtime.vnfs.iter_mut().zip(&record.vnfs).enumerate() {
            let h = status.hops[hop].clone();
            let alive = r.pid.filter(|&p| {
                v.netns
                    .as_ref()
                    .is_some_and(|n| nham_netns::pid_in(p, &n.path()))
            });
            // A checkpoint the last daemon left: its image counts only if
            // the store committed it.
            let settle = match h.phase {
                PhaseStatus::Idle => Ok(()),
                PhaseStatus::Storing(id) => {
                    let committed = state.store.get(&runtime.plan.name, &v.plan.name, id);
                    if matches!(committed, Ok(Some(_))) {
                        sff.checkpoint_done(hop, id).map(|_| ())
                    } else {
                        sff.checkpoint_failed(hop, id)
                    }
                }
                PhaseStatus::Draining(id) | PhaseStatus::Dumping(id) => {
                    // The checkpoint protocol may have left it stopped.
                    if let Some(p) = alive {
                        let _ = process::signal(p, nix::sys::signal::Signal::SIGCONT);
                    }
                    sff.checkpoint_failed(hop, id)
                }
            };
            settle?;
            // (An MR-AA member 0 the SFF counts as failed is being
            // recovered: its process, if any, is of unknown state.)
            let member_0_failed = matches!(
                h.members.first(),
                Some(nham_dataplane::hold::MemberState::Failed)
            );
            match alive.filter(|_| !h.recovering && !member_0_failed) {
                Some(p) => pidfds.push(Some(v.adopt(p)?)),
                None => {
                    // Dead, or caught in the middle of its recovery (the
                    // process there is of unknown state): recover afresh.
                    if let Some(n) = &v.netns {
                        nham_netns::kill_processes_in(&n.path());
                    }
                    v.process = None;
                    pidfds.push(None);
                }
            }
            // MR-AA members 1 to M-1: adopted if alive and serving (live or
            // catching up in the SFF); otherwise recovered like a member
            // that exits (the SFF is told it failed first).
            for k in 1..=v.members.len() {
                let m = &v.members[k - 1];
                let serving = h
                    .members
                    .get(k)
                    .is_some_and(|s| !matches!(s, nham_dataplane::hold::MemberState::Failed));
                let alive = r.members[k - 1]
                    .pid
                    .filter(|&p| serving && nham_netns::pid_in(p, &m.netns.path()));
                match alive {
                    Some(p) => {
                        let fd = v.adopt_member(k, p)?;
                        runtime.member_pidfds.push((hop, k, fd));
                    }
                    None => {
                        nham_netns::kill_processes_in(&m.netns.path());
                        runtime.lost_members.push((hop, k));
                    }
                }
            }
        }
        for hop in 0..runtime.vnfs.len() {
            let m = runtime.vnfs[hop].plan.mechanism;
            // The agent's pid is that of the process it protects, or of the
            // one whose image it restores (CRIU keeps pids).
            let old = record.vnfs[hop].pid;
            let v = &runtime.vnfs[hop];
            let pid = v.pid().or(old);
            runtime.protect_as(hop, m, state, pid)?;
        }
        runtime.detached = false;
        for v in &mut runtime.vnfs {
            if let Some(n) = v.netns.as_mut() {
                n.unkeep();
            }
            if let Some(c) = v.cgroup.as_mut() {
                c.unkeep();
            }
            if let Some(r) = v.replica.as_mut() {
                r.netns.unkeep();
            }
            for m in &mut v.members {
                m.netns.unkeep();
            }
        }
        Ok((runtime, pidfds))
    }
}
