//! What a metrics scrape reads of the daemon ([`crate::metrics::Snapshot`]):
//! its chains' VNFs and their states, each hop's held packets (the SFF's
//! status) and each chain's data-path drops (the SFF's counters).

use super::*;
use crate::metrics::{ChainSnapshot, Snapshot, VnfSnapshot};

impl Daemon {
    /// Whether the daemon answers at all (a service manager's watchdog):
    /// its chains' lock and the blocking pool both serve; the number of
    /// chains.
    pub async fn alive(&self) -> usize {
        let n = self.chains.lock().await.len();
        let _ = tokio::task::spawn_blocking(|| ()).await;
        n
    }

    /// The chains as a scrape shows them; `serving` is false when the
    /// state database or a chain's SFF does not answer.
    pub async fn metrics_snapshot(&self) -> Snapshot {
        let chains: Vec<_> = {
            let chains = self.chains.lock().await;
            (chains.iter())
                .map(|(name, e)| {
                    let status = e.runtime.status();
                    let vnfs = (status.vnfs.iter().zip(&e.runtime.vnfs))
                        .map(|(v, r)| VnfSnapshot {
                            name: v.name.clone(),
                            mechanism: v.mechanism.map_or("none", |m| m.name()).to_string(),
                            state: format!("{:?}", v.phase).to_ascii_lowercase(),
                            checkpoint_interval: v.mechanism.map(|_| {
                                (r.plan.checkpoint_interval)
                                    .unwrap_or(self.state.checkpoint_interval)
                            }),
                        })
                        .collect::<Vec<_>>();
                    (name.clone(), vnfs, e.runtime.sff.clone())
                })
                .collect()
        };
        let capacity = self.sff.hold_packets as u64;
        let store = self.state.store.clone();
        let mut serving = tokio::task::spawn_blocking(move || store.healthy())
            .await
            .unwrap_or(false);
        let mut out = Vec::new();
        for (name, vnfs, sff) in chains {
            let mut c = ChainSnapshot {
                name,
                ..Default::default()
            };
            if let Some(sff) = sff {
                let read = tokio::task::spawn_blocking(move || {
                    Ok::<_, ControlError>((sff.status()?, sff.stats()?))
                })
                .await
                .map_err(ControlError::from)
                .and_then(|r| r);
                match read {
                    Ok((status, s)) => {
                        c.held = (vnfs.iter().zip(&status.hops))
                            .map(|(v, hop)| (v.name.clone(), hop.held as u64, capacity))
                            .collect();
                        c.drops = vec![
                            ("classifier_miss", s.classifier_miss),
                            ("malformed_ingress", s.malformed_ingress),
                            ("oversize", s.oversize),
                            ("malformed_from_vnf", s.malformed_from_vnf),
                            ("si_mismatch", s.si_mismatch),
                            ("ttl_expired", s.ttl_expired),
                            ("stale", s.stale),
                            ("fenced", s.fenced),
                            ("tx_discarded", s.tx_discarded),
                            ("ingress_kernel", s.ingress_kernel_drops),
                            ("vnf_output_kernel", s.vnf_output_kernel_drops),
                            ("pool_exhausted", s.pool_exhausted),
                        ];
                    }
                    // (A chain deleted meanwhile is no failure.)
                    Err(_) if !self.chains.lock().await.contains_key(&c.name) => continue,
                    Err(e) => {
                        tracing::warn!(chain = c.name, "metrics: its SFF does not answer: {e}");
                        serving = false;
                    }
                }
            } else {
                serving = false;
            }
            c.vnfs = vnfs;
            out.push(c);
        }
        Snapshot {
            chains: out,
            serving,
        }
    }

    /// The mechanism of VNF `vnf` of `chain` (`none`), if there is one.
    pub async fn mechanism_of(&self, chain: &str, vnf: &str) -> Option<&'static str> {
        let chains = self.chains.lock().await;
        let v = chains.get(chain)?.runtime.vnf_index(vnf).ok()?;
        let m = chains.get(chain)?.runtime.vnfs[v].plan.mechanism;
        Some(m.map_or("none", |m| m.name()))
    }
}
