//! The Failure Detector (driver): probes every VNF and MR-AA member of a
//! chain each interval and feeds `fms::detector::Detector`; a VNF judged hung,
//! cut off or missing input is killed, so every failure takes the crash
//! path with the cause and time of the judgement.

#[allow(unused_imports)]
use super::*;
use crate::fms::recovery::Action;

impl Daemon {
    /// Probes every VNF of `chain` each probe interval for hangs and
    /// cut-offs (see [`crate::fms::detector`]); a VNF judged failed is killed, so
    /// that its pidfd hands it to recovery like a crash, with the cause and
    /// time of the judgement. The task ends with the chain.
    pub(super) fn watch_data_path(self: &Arc<Self>, chain: String) {
        use crate::fms::detector::{Detector, Probe, Verdict};
        let daemon = Arc::downgrade(self);
        let (interval, threshold) = (self.state.probe_interval, self.state.probe_threshold);
        tokio::spawn(async move {
            let mut detectors: BTreeMap<(String, usize), (u64, Detector)> = BTreeMap::new();
            let mut sockets = crate::capacity::SocketWatch::default();
            // Per hop, divergent replays already reported.
            let mut divergent_seen: Vec<u64> = Vec::new();
            let origin = Instant::now();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = daemon.upgrade() else { return };
                // What to probe: running VNFs, by incarnation; and the SFF,
                // for replays that differed (non-deterministic VNFs).
                let (names, sff, targets): (Vec<String>, _, Vec<ProbeTarget>) = {
                    let chains = d.chains.lock().await;
                    let Some(e) = chains.get(&chain) else { return };
                    let names = e.runtime.vnfs.iter().map(|v| v.plan.name.clone()).collect();
                    let vnfs = e.runtime.vnfs.iter();
                    let members = vnfs.clone().flat_map(|v| {
                        v.members.iter().enumerate().filter_map(|(i, m)| {
                            Some((
                                v.plan.name.clone(),
                                i + 1,
                                m.recovery.probed()?,
                                m.pid()?,
                                m.sff_iface.clone(),
                                m.netns.path(),
                            ))
                        })
                    });
                    let targets = vnfs
                        .filter_map(|v| {
                            Some((
                                v.plan.name.clone(),
                                0,
                                v.recovery.probed()?,
                                v.pid()?,
                                v.sff_iface.clone(),
                                v.netns.as_ref()?.path(),
                            ))
                        })
                        .chain(members)
                        .collect();
                    (names, e.runtime.sff.clone(), targets)
                };
                let hop_of = names.clone();
                let mut watch = std::mem::take(&mut sockets);
                let (probes, status, watch) = tokio::task::spawn_blocking(move || {
                    // The SFF first: a VNF that answers after this and
                    // before its queue is read is seen answering next time.
                    let status = sff.as_ref().and_then(|s| s.status().ok());
                    let probes = targets
                        .into_iter()
                        .map(|(name, k, inc, pid, iface, netns)| {
                            let hop = hop_of.iter().position(|n| *n == name);
                            let heard = (status.as_ref())
                                .zip(hop)
                                .and_then(|(st, hop)| st.hops.get(hop)?.heard.get(k).copied());
                            // What its sockets hold and dropped; the SFF is
                            // told what they hold when it changes.
                            let socks = watch.sockets(&name, k, pid, &netns);
                            if let (Some(s), Some(hop), Some(sff)) = (&socks, hop, &sff) {
                                if let Some(c) = watch.learned(&name, k, s) {
                                    match sff.set_capacity(hop, k, c) {
                                        Ok(_) => {
                                            tracing::info!(
                                                vnf = name,
                                                member = k,
                                                "its socket holds {} bytes{}{}: at most {} bytes of kernel charge in flight to it",
                                                c.bytes,
                                                if c.outgoing_copies { " (ETH_P_ALL beside another sender: its outputs charged too)" } else { "" },
                                                if c.ring { " (a ring)" } else { "" },
                                                c.budget()
                                            );
                                            watch.told(&name, k, c);
                                        }
                                        Err(e) => tracing::warn!(vnf = name, "telling the SFF its capacity: {e}"),
                                    }
                                }
                            }
                            // Read: every frame sent before the last probe
                            // left its sockets (frees, after silence, what a
                            // VNF dropped without answering).
                            let window = (status.as_ref())
                                .zip(hop)
                                .and_then(|(st, hop)| st.hops.get(hop)?.in_flight.get(k).copied());
                            if let (Some(hop), Some(sff), Some(w)) = (hop, &sff, window) {
                                // Without sock_diag, /proc's queue column
                                // (a ring's content unseen: never empty).
                                let empty = match &socks {
                                    Some(s) => s.rmem == 0 && !watch.ring_queue(&name, k).0,
                                    None => crate::vsm::checkpointer::packet_rmem(pid).is_ok_and(|r| r == 0)
                                        && !crate::vsm::checkpointer::has_ring(pid),
                                };
                                if let Some(upto) = watch.read_upto(&name, k, w.3, empty) {
                                    let _ = sff.socket_read(hop, k, upto);
                                }
                            }
                            let probe = Probe {
                                rmem: socks.map_or_else(
                                    || crate::vsm::checkpointer::packet_rmem(pid).unwrap_or(0),
                                    |s| s.rmem + watch.ring_queue(&name, k).1,
                                ),
                                carrier: nham_netns::has_carrier(&iface).unwrap_or(true),
                                drops: socks.map_or(0, |s| s.drops)
                                    + u64::from(watch.ring_losing(&name, k)),
                                heard,
                                cpu: cpu_use(pid),
                                at: origin.elapsed(),
                            };
                            // Input dropped: it gets half as much at once,
                            // before the replay that repairs it.
                            if probe.drops > 0 {
                                tracing::warn!(
                                    vnf = name,
                                    member = k,
                                    "pid {pid}: its sockets dropped {} frames: {}; the SFF's window towards it (frames, bytes, budget): {window:?}; heard {heard:?}",
                                    probe.drops,
                                    watch.describe(&name, k)
                                );
                                if let (Some(s), Some(hop), Some(sff)) = (&socks, hop, &sff) {
                                    let c = watch.dropped(&name, k, s);
                                    if sff.set_capacity(hop, k, c).is_ok() {
                                        watch.told(&name, k, c);
                                    }
                                }
                            }
                            (name, k, inc, probe)
                        })
                        .collect::<Vec<_>>();
                    (probes, status, watch)
                })
                .await
                .unwrap_or_default();
                sockets = watch;
                if let Some(status) = status {
                    divergent_seen.resize(status.hops.len(), 0);
                    for (hop, h) in status.hops.iter().enumerate() {
                        let new = h.divergent.saturating_sub(divergent_seen[hop]);
                        if new > 0 {
                            divergent_seen[hop] = h.divergent;
                            let vnf = names.get(hop).cloned().unwrap_or_default();
                            tracing::warn!(
                                chain,
                                vnf,
                                "non-deterministic VNF: {new} replayed outputs differed from the originals"
                            );
                            d.emit(event(
                                &chain,
                                &vnf,
                                Event::NonDeterminismDetected {
                                    outputs: new,
                                    total: h.divergent,
                                },
                            ));
                        }
                    }
                }
                for (name, k, inc, probe) in probes {
                    let entry = detectors
                        .entry((name.clone(), k))
                        .or_insert_with(|| (inc, Detector::new(threshold)));
                    if entry.0 != inc {
                        *entry = (inc, Detector::new(threshold));
                    }
                    let verdict = entry.1.handle_probe(probe);
                    if verdict == Verdict::InputDropped {
                        d.input_dropped(&chain, &name, k, probe.drops, &sockets)
                            .await;
                    }
                    if verdict != Verdict::Healthy {
                        d.judge(&chain, &name, k, inc, verdict).await;
                    }
                }
            }
        });
    }

    /// VNF `vnf` (MR-AA member `k`) missed `frames` of input at its full
    /// socket: counted, said in an event and a warning (it is then judged
    /// failed and recovered, which repairs it).
    pub(super) async fn input_dropped(
        &self,
        chain: &str,
        vnf: &str,
        k: usize,
        frames: u64,
        sockets: &crate::capacity::SocketWatch,
    ) {
        if let Some(e) = self.chains.lock().await.get_mut(chain) {
            e.input_dropped += frames;
        }
        let budget = sockets.told_budget(vnf, k);
        tracing::warn!(
            chain,
            vnf,
            member = k,
            "the kernel dropped {frames} frames sent to it (its socket was full): recovering it; from now on at most {budget} bytes of kernel charge in flight to it"
        );
        self.emit(event(
            chain,
            vnf,
            Event::VnfInputDropped {
                member: k as u32,
                frames,
                budget_bytes: budget,
            },
        ));
    }

    /// The detector judged VNF `vnf` (MR-AA member `k`, incarnation `inc`)
    /// failed: record why and kill it; recovery takes it from there (and
    /// brings a cut-off link up again).
    pub(super) async fn judge(
        &self,
        chain: &str,
        vnf: &str,
        k: usize,
        inc: u64,
        verdict: crate::fms::detector::Verdict,
    ) {
        let at = Instant::now();
        let mut chains = self.chains.lock().await;
        let Some(v) = vnf_in(&mut chains, chain, vnf) else {
            return;
        };
        let how = super::failure_recovery::comeback(v, k);
        let (process, netns) = match k {
            0 => match v.netns.as_ref() {
                Some(n) => (v.process.clone(), n.path()),
                None => return,
            },
            k => match v.members.get(k - 1) {
                Some(m) => (m.process.clone(), m.netns.path()),
                None => return,
            },
        };
        let (Some(process), Some(fr)) = (process, v.recovery_of(k)) else {
            return;
        };
        let actions = fr.handle_verdict(inc, verdict, at, how);
        if actions.is_empty() {
            return;
        }
        let who = super::failure_recovery::who(k);
        tracing::warn!(chain, vnf, "{who}failure detected: {}", verdict.cause());
        // The rest waits up to 500 ms: not under the registry.
        drop(chains);
        for a in actions {
            match a {
                // A member is restored behind the same link: bring it up
                // first (the SFF then flushes what the dead one was sent).
                // But stop the member before: reconnected while it runs, it
                // would answer frames it was sent while cut off, numbered as
                // though it had missed none (and the SFF still takes it for
                // live until it is seen dead): wrong outputs under right
                // numbers. Stopped, it reads nothing more before it dies.
                Action::StopAndReconnect => {
                    process.stop_and_wait(Duration::from_millis(500)).await;
                    let up = nham_netns::run_in(&netns, || {
                        nham_netns::set_up(crate::runtime::VNF_IFACE)
                    });
                    match up {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(chain, vnf, "{who}bringing its link up: {e}"),
                        Err(e) => tracing::error!(chain, vnf, "{who}bringing its link up: {e}"),
                    }
                }
                // Recovery brings a cut-off link up again.
                Action::Kill => {
                    if let Err(e) = process.signal(nix::sys::signal::Signal::SIGKILL) {
                        tracing::error!(chain, vnf, "{who}killing it: {e}");
                    }
                }
                _ => {}
            }
        }
    }
}

/// Process `pid`'s threads' use of the CPU: from each
/// `/proc/<pid>/task/<tid>/schedstat` (time run, time waited on a run
/// queue, in ns) and `stat` (state `R`: runnable); `None` when the kernel
/// does not say (or a thread ended meanwhile).
fn cpu_use(pid: u32) -> Option<crate::fms::detector::Cpu> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut cpu = crate::fms::detector::Cpu::default();
    for task in tasks.flatten() {
        let sched = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        let mut ns = sched.split_whitespace().map(|f| f.parse::<u64>().ok());
        cpu.ran += Duration::from_nanos(ns.next()??);
        cpu.waited += Duration::from_nanos(ns.next()??);
        let tid = task.file_name().to_str()?.parse().ok()?;
        cpu.runnable |= nham_netns::process_state(tid)?.0 == 'R';
    }
    Some(cpu)
}
