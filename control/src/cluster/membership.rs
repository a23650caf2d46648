//! Which hosts there are and which of them are alive: the decisions of
//! host failure detection, with no I/O and no clock (time is passed in).
//!
//! Two sources, with different roles:
//! - **etcd** is the authority on membership: a host is a member while its
//!   registration, bound to its lease, exists ([`Membership::handle_registered`],
//!   [`Membership::handle_unregistered`]). A lease takes seconds to expire.
//! - **heartbeats** between `nhamd`s, every `interval` (10 ms), are the
//!   fast path ([`Membership::handle_heartbeat`]): a member not heard for
//!   `misses` intervals is judged [`Liveness::Down`] by [`Membership::poll`],
//!   and its VNFs can be recovered elsewhere at once. Heard again, it is
//!   [`HostEvent::Back`] (a partition healed: what ran there was moved and
//!   is fenced in the data path). A new incarnation (its `nhamd`
//!   restarted) is a host that came back too. A member that says it
//!   stops on purpose ([`Membership::handle_leaving`]) is never judged
//!   down for the silence that follows.
//!
//! Silence only counts while this host was itself listening: a poll that
//! comes late (this `nhamd` was starved of CPU for more than two
//! intervals, and heartbeats may wait unread in its socket) is no evidence
//! against anyone, so every member's silence starts again from that poll. A peer starved as long is judged down; that
//! is the price of detecting in tens of milliseconds, and why the judgement
//! is a fast suspicion that fences, not a membership change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A host as it registers itself in etcd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// Its name (unique in the cluster).
    pub name: String,
    /// Where its API listens (for requests forwarded to it).
    pub api: String,
    /// Where it hears heartbeats, on the underlay.
    pub heartbeat: SocketAddr,
    /// Where its peer service listens (copies of checkpoints), if it has
    /// one.
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// The incarnation of the `nhamd` that registered (its heartbeats
    /// carry it).
    #[serde(default)]
    pub incarnation: u64,
}

/// What this host knows of a member's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Registered, never heard yet.
    Joining,
    /// Heard within the last `misses` intervals.
    Alive,
    /// Silent for `misses` intervals or more, since `since`.
    Down {
        /// When it was judged down.
        since: Duration,
    },
    /// It said it stops on purpose (its `nhamd` shutting down): its
    /// silence is no failure.
    Leaving,
}

/// A change worth acting on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A member was heard for the first time.
    Up {
        /// Its name.
        host: String,
    },
    /// A member fell silent: judged down.
    Down {
        /// Its name.
        host: String,
        /// When it was last heard (the best bound on when it died).
        last_heard: Duration,
        /// From then to the judgement.
        detection: Duration,
    },
    /// A member judged down was heard again (a partition healed), or came
    /// back as a new incarnation (its `nhamd` restarted).
    Back {
        /// Its name.
        host: String,
    },
    /// A member said it stops on purpose.
    Leaving {
        /// Its name.
        host: String,
    },
    /// A member's registration is gone (its lease expired, or it left).
    Left {
        /// Its name.
        host: String,
    },
}

/// One member, as [`Membership::members`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its registration.
    pub record: HostRecord,
    /// Alive or not.
    pub liveness: Liveness,
    /// When it was last heard.
    pub last_heard: Option<Duration>,
    /// Its incarnation (from its registration and heartbeats).
    pub incarnation: u64,
    /// When its registration was first seen.
    pub registered: Duration,
}

impl Member {
    /// Heard from incarnation `incarnation` at `now`; `None` (and nothing
    /// changed) for an older incarnation's word.
    fn heard(&mut self, incarnation: u64, now: Duration) -> Option<()> {
        if incarnation < self.incarnation {
            return None;
        }
        self.incarnation = incarnation;
        self.last_heard = Some(self.last_heard.map_or(now, |t| t.max(now)));
        Some(())
    }
}

/// The members of the cluster and their liveness, as this host sees them.
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    interval: Duration,
    misses: u32,
    members: BTreeMap<String, Member>,
    last_poll: Option<Duration>,
}

impl Membership {
    /// The view of host `me`, heartbeats every `interval`, a member judged
    /// down after `misses` (at least 2) intervals of silence.
    pub fn new(me: &str, interval: Duration, misses: u32) -> Self {
        Self {
            me: me.to_string(),
            interval,
            misses: misses.max(2),
            members: BTreeMap::new(),
            last_poll: None,
        }
    }

    /// How long a member may stay silent.
    pub fn timeout(&self) -> Duration {
        self.interval * self.misses
    }

    /// How long a member may stay silent after its registration before it
    /// was ever heard: 20 timeouts (a host starting sends at once).
    pub fn join_grace(&self) -> Duration {
        self.timeout() * 20
    }

    /// A registration seen in etcd at `now` (new, or changed). This
    /// host's own is not a member of its view. A registration of another
    /// incarnation (its `nhamd` restarted) sets the member's incarnation,
    /// lower or higher: etcd has the last word (a wall clock stepped back
    /// across a restart gives a lower one).
    pub fn handle_registered(&mut self, record: HostRecord, now: Duration) {
        if record.name == self.me {
            return;
        }
        match self.members.get_mut(&record.name) {
            Some(m) => {
                if record.incarnation != m.record.incarnation {
                    m.incarnation = record.incarnation;
                }
                m.record = record;
            }
            None => {
                self.members.insert(
                    record.name.clone(),
                    Member {
                        incarnation: record.incarnation,
                        record,
                        liveness: Liveness::Joining,
                        last_heard: None,
                        registered: now,
                    },
                );
            }
        }
    }

    /// A registration gone from etcd.
    pub fn handle_unregistered(&mut self, name: &str) -> Option<HostEvent> {
        self.members.remove(name).map(|_| HostEvent::Left {
            host: name.to_string(),
        })
    }

    /// A heartbeat from `name`, incarnation `incarnation`, at `now`. A
    /// heartbeat of a host not (yet) registered is ignored: etcd says who
    /// is a member; an older incarnation's is ignored too.
    pub fn handle_heartbeat(
        &mut self,
        name: &str,
        incarnation: u64,
        now: Duration,
    ) -> Option<HostEvent> {
        let m = self.members.get_mut(name)?;
        if m.liveness == Liveness::Leaving && incarnation == m.incarnation {
            return None;
        }
        let restarted = m.last_heard.is_some() && incarnation > m.incarnation;
        m.heard(incarnation, now)?;
        let host = name.to_string();
        let event = match m.liveness {
            Liveness::Joining => Some(HostEvent::Up { host }),
            Liveness::Down { .. } | Liveness::Leaving => Some(HostEvent::Back { host }),
            Liveness::Alive if restarted => Some(HostEvent::Back { host }),
            Liveness::Alive => None,
        };
        m.liveness = Liveness::Alive;
        event
    }

    /// Member `name`, incarnation `incarnation`, says it stops on purpose
    /// (a heartbeat with the leaving flag): it is not judged down; a new
    /// incarnation of it is back.
    pub fn handle_leaving(
        &mut self,
        name: &str,
        incarnation: u64,
        now: Duration,
    ) -> Option<HostEvent> {
        let m = self.members.get_mut(name)?;
        if m.liveness == Liveness::Leaving {
            return None;
        }
        m.heard(incarnation, now)?;
        m.liveness = Liveness::Leaving;
        Some(HostEvent::Leaving {
            host: name.to_string(),
        })
    }

    /// Judges silence at `now`: every member alive and not heard for
    /// [`Membership::timeout`] is down. A poll more than two intervals
    /// after the previous one (this host was starved, and heartbeats may
    /// wait unread in its socket) judges nobody: silence counts again from
    /// `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<HostEvent> {
        let timeout = self.timeout();
        let late = self
            .last_poll
            .is_some_and(|last| now.saturating_sub(last) > 2 * self.interval);
        self.last_poll = Some(self.last_poll.map_or(now, |t| t.max(now)));
        let mut events = Vec::new();
        let grace = self.join_grace();
        for (name, m) in &mut self.members {
            let Some(heard) = m.last_heard else {
                // Registered, never heard: down once the grace is over
                // (it died at once, or its heartbeats cannot reach us).
                if late {
                    m.registered = m.registered.max(now);
                } else if m.liveness == Liveness::Joining
                    && now.saturating_sub(m.registered) >= grace
                {
                    m.liveness = Liveness::Down { since: now };
                    events.push(HostEvent::Down {
                        host: name.clone(),
                        last_heard: m.registered,
                        detection: now - m.registered,
                    });
                }
                continue;
            };
            if late {
                m.last_heard = Some(heard.max(now));
                continue;
            }
            if m.liveness == Liveness::Alive && now.saturating_sub(heard) >= timeout {
                m.liveness = Liveness::Down { since: now };
                events.push(HostEvent::Down {
                    host: name.clone(),
                    last_heard: heard,
                    detection: now - heard,
                });
            }
        }
        events
    }

    /// When [`Membership::poll`] should next run: at the earliest moment
    /// a member alive now, or joining and never heard, could be judged
    /// down (`None`: nobody to judge).
    pub fn poll_at(&self) -> Option<Duration> {
        let alive = self
            .members
            .values()
            .filter(|m| m.liveness == Liveness::Alive)
            .filter_map(|m| m.last_heard)
            .map(|t| t + self.timeout());
        let joining = self
            .members
            .values()
            .filter(|m| m.liveness == Liveness::Joining && m.last_heard.is_none())
            .map(|m| m.registered + self.join_grace());
        alive.chain(joining).min()
    }

    /// The members (this host aside), by name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Member `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Where heartbeats go: every member's heartbeat address.
    pub fn heartbeat_targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.members.values().map(|m| m.record.heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn record(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            api: format!("http://{name}:50051"),
            heartbeat: "10.0.0.1:50052".parse().unwrap(),
            peer: None,
            incarnation: 0,
        }
    }

    #[test]
    fn a_silent_member_is_down_after_the_timeout_and_back_when_heard() {
        let mut m = Membership::new("a", 10 * MS, 5);
        m.handle_registered(record("a"), Duration::ZERO);
        m.handle_registered(record("b"), Duration::ZERO);
        assert_eq!(m.members().count(), 1, "a host is not its own member");
        assert_eq!(
            m.poll(Duration::ZERO),
            vec![],
            "never heard: nothing to judge"
        );
        assert_eq!(
            m.handle_heartbeat("b", 1, 5 * MS),
            Some(HostEvent::Up { host: "b".into() })
        );
        for t in (10..=50).step_by(10) {
            assert_eq!(m.poll(t * MS), vec![], "{t} ms: within the timeout");
        }
        assert_eq!(m.poll_at(), Some(55 * MS));
        assert_eq!(
            m.poll(55 * MS),
            vec![HostEvent::Down {
                host: "b".into(),
                last_heard: 5 * MS,
                detection: 50 * MS
            }]
        );
        assert_eq!(m.poll(60 * MS), vec![], "judged once");
        assert_eq!(
            m.handle_heartbeat("b", 1, 70 * MS),
            Some(HostEvent::Back { host: "b".into() })
        );
        assert_eq!(m.handle_heartbeat("b", 1, 80 * MS), None);
        assert_eq!(
            m.handle_heartbeat("b", 2, 90 * MS),
            Some(HostEvent::Back { host: "b".into() }),
            "a new incarnation came back"
        );
        assert_eq!(
            m.handle_heartbeat("b", 1, 95 * MS),
            None,
            "an older one is ignored"
        );
        assert_eq!(
            m.handle_unregistered("b"),
            Some(HostEvent::Left { host: "b".into() })
        );
        assert_eq!(m.handle_heartbeat("b", 2, 100 * MS), None, "not a member");
    }

    #[test]
    fn a_member_that_says_it_leaves_is_not_judged_down() {
        let mut m = Membership::new("a", 10 * MS, 5);
        m.handle_registered(record("b"), Duration::ZERO);
        m.handle_heartbeat("b", 1, Duration::ZERO);
        assert_eq!(
            m.handle_leaving("b", 1, 5 * MS),
            Some(HostEvent::Leaving { host: "b".into() })
        );
        assert_eq!(m.handle_leaving("b", 1, 6 * MS), None, "said once");
        assert_eq!(
            m.handle_heartbeat("b", 1, 7 * MS),
            None,
            "a late beat of it"
        );
        for t in (10..=500).step_by(10) {
            assert_eq!(m.poll(t * MS), vec![], "{t} ms: silent, not down");
        }
        assert_eq!(
            m.handle_heartbeat("b", 2, 510 * MS),
            Some(HostEvent::Back { host: "b".into() }),
            "restarted"
        );
        assert_eq!(m.poll(570 * MS).len(), 0, "(a late poll)");
        assert_eq!(m.poll(580 * MS).len(), 0);
        assert_eq!(m.poll(590 * MS).len(), 0);
        assert_eq!(m.poll(600 * MS).len(), 0);
        assert_eq!(m.poll(610 * MS).len(), 0);
        assert_eq!(m.poll(620 * MS).len(), 1, "alive again: judged again");
    }

    #[test]
    fn a_member_never_heard_is_down_after_the_join_grace() {
        let mut m = Membership::new("a", 10 * MS, 5);
        m.handle_registered(record("b"), 100 * MS);
        assert_eq!(m.poll_at(), Some(1100 * MS));
        for t in (110..1100).step_by(10) {
            assert_eq!(m.poll(t * MS), vec![], "{t} ms");
        }
        assert_eq!(
            m.poll(1100 * MS),
            vec![HostEvent::Down {
                host: "b".into(),
                last_heard: 100 * MS,
                detection: 1000 * MS
            }]
        );
        assert_eq!(
            m.handle_heartbeat("b", 1, 1200 * MS),
            Some(HostEvent::Back { host: "b".into() })
        );
    }

    #[test]
    fn a_registration_of_another_incarnation_has_the_last_word() {
        let mut m = Membership::new("a", 10 * MS, 5);
        let mut b = record("b");
        b.incarnation = 50;
        m.handle_registered(b.clone(), Duration::ZERO);
        assert_eq!(
            m.handle_heartbeat("b", 49, MS),
            None,
            "older than its registration"
        );
        assert_eq!(
            m.handle_heartbeat("b", 50, 2 * MS),
            Some(HostEvent::Up { host: "b".into() })
        );
        // Restarted with a clock stepped back: a lower incarnation,
        // registered, is the one heard from now on.
        b.incarnation = 7;
        m.handle_registered(b, 3 * MS);
        assert_eq!(m.handle_heartbeat("b", 7, 4 * MS), None);
        assert_eq!(m.member("b").map(|b| b.incarnation), Some(7));
    }

    #[test]
    fn a_late_poll_judges_nobody() {
        let mut m = Membership::new("a", 10 * MS, 5);
        m.handle_registered(record("b"), Duration::ZERO);
        m.handle_heartbeat("b", 1, Duration::ZERO);
        assert_eq!(m.poll(10 * MS), vec![]);
        // This host starved for 200 ms (or just 25): b's silence is no
        // evidence.
        assert_eq!(m.poll(210 * MS), vec![]);
        for t in (220..=250).step_by(10) {
            assert_eq!(m.poll(t * MS), vec![], "{t} ms");
        }
        assert_eq!(
            m.poll(260 * MS).len(),
            1,
            "silent 50 ms after the late poll"
        );
    }

    proptest! {
        /// Against a reference: polled at least every interval, a member is
        /// judged down exactly when it was silent for the timeout, once per
        /// silence, never sooner, and never later than one poll after.
        #[test]
        fn judged_down_exactly_after_the_timeout_of_silence(
            beats in proptest::collection::vec(prop::bool::ANY, 1..400),
        ) {
            let (interval, misses) = (10 * MS, 5);
            let mut m = Membership::new("a", interval, misses);
            m.handle_registered(record("b"), Duration::ZERO);
            let mut last: Option<Duration> = None;
            let mut down = false;
            for (k, beat) in beats.iter().enumerate() {
                let now = interval * k as u32;
                if *beat {
                    let e = m.handle_heartbeat("b", 1, now);
                    let want = match (last, down) {
                        (None, _) => Some(HostEvent::Up { host: "b".into() }),
                        (Some(_), true) => Some(HostEvent::Back { host: "b".into() }),
                        _ => None,
                    };
                    prop_assert_eq!(e, want);
                    last = Some(now);
                    down = false;
                }
                let events = m.poll(now);
                let should = match last {
                    Some(t) => !down && now - t >= interval * misses,
                    None => false,
                };
                prop_assert_eq!(events.len(), usize::from(should), "at {:?}", now);
                if should {
                    down = true;
                    let is_down = matches!(
                        m.member("b").map(|b| b.liveness),
                        Some(Liveness::Down { .. })
                    );
                    prop_assert!(is_down);
                }
            }
        }
    }
}
