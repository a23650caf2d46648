//! Retries of mutating calls, answered once (`request_id`, issue 15 item
//! 7): an orchestrator whose `CreateChain` timed out sends it again with
//! the same `request_id` and gets the first call's answer, never a second
//! chain or a second heal.
//!
//! This module decides; the API layer ([`super::server`]) does the I/O:
//! it asks [`Idempotency::handle_begin`] before running a call, runs it
//! (to its end, even if the caller goes away) when told [`Begin::Run`],
//! and gives a success to [`Idempotency::handle_done`]; a failure (or a
//! call that panicked) to [`Idempotency::handle_forget`], so that its
//! retry runs again (a failed call changed nothing to keep; an error such
//! as `UNAVAILABLE` says "try again"). Keys are (call,
//! `request_id`); a key is bound to a digest of the whole request, so the
//! same id with another request is refused, not answered with the wrong
//! result. Answers are kept for a TTL and at most a capacity of them
//! ([`RETRY_TTL`], [`RETRY_CAPACITY`] in a daemon; the oldest go first); a call still
//! running is never forgotten.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::error::ControlError;

/// A call and its `request_id`.
pub type Key = (&'static str, String);

/// What to do with a call that carries a `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin<R> {
    /// The first of its key: run it, then [`Idempotency::handle_done`].
    Run,
    /// The same request runs: wait for its answer (then ask again).
    Running,
    /// The same request was answered: this is its answer.
    Answer(R),
    /// The key was used for another request: refuse (`INVALID_ARGUMENT`).
    Reused,
}

#[derive(Debug)]
enum Entry<R> {
    Running { digest: [u8; 32] },
    Done { digest: [u8; 32], answer: R },
}

/// The answers of recent calls by key.
#[derive(Debug)]
pub struct Idempotency<R> {
    entries: HashMap<Key, Entry<R>>,
    /// Answered keys, oldest first, with when.
    done: VecDeque<(Instant, Key)>,
    ttl: Duration,
    capacity: usize,
}

impl<R: Clone> Idempotency<R> {
    /// Keeping answers `ttl`, at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            done: VecDeque::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// A call with `key` and request `digest` arrives at `now`.
    pub fn handle_begin(&mut self, key: &Key, digest: [u8; 32], now: Instant) -> Begin<R> {
        self.poll_expire(now);
        match self.entries.get(key) {
            None => {
                self.entries.insert(key.clone(), Entry::Running { digest });
                Begin::Run
            }
            Some(Entry::Running { digest: d } | Entry::Done { digest: d, .. }) if *d != digest => {
                Begin::Reused
            }
            Some(Entry::Running { .. }) => Begin::Running,
            Some(Entry::Done { answer, .. }) => Begin::Answer(answer.clone()),
        }
    }

    /// The call with `key` (told [`Begin::Run`]) answered `answer` at
    /// `now`.
    pub fn handle_done(&mut self, key: &Key, answer: R, now: Instant) {
        if let Some(Entry::Running { digest }) = self.entries.get(key) {
            let digest = *digest;
            self.entries
                .insert(key.clone(), Entry::Done { digest, answer });
            self.done.push_back((now, key.clone()));
        }
        self.poll_expire(now);
    }

    /// The call with `key` (told [`Begin::Run`]) failed: forgotten, so
    /// that a retry runs it again (and a retry waiting on it runs it).
    pub fn handle_forget(&mut self, key: &Key) {
        if let Some(Entry::Running { .. }) = self.entries.get(key) {
            self.entries.remove(key);
        }
    }

    /// Forgets answers older than the TTL, and the oldest beyond the
    /// capacity.
    pub fn poll_expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.done.front() {
            let old = now.saturating_duration_since(*at) >= self.ttl;
            if !old && self.done.len() <= self.capacity {
                break;
            }
            self.entries.remove(key);
            self.done.pop_front();
        }
    }

    /// Answers kept (and calls running).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How long answers are kept.
pub const RETRY_TTL: Duration = Duration::from_secs(600);
/// How many answers are kept at most.
pub const RETRY_CAPACITY: usize = 4096;
/// The longest `request_id`.
pub const MAX_REQUEST_ID: usize = 128;

/// The driver: a daemon's answers to mutating calls with a `request_id`
/// (successes only, encoded).
#[derive(Debug)]
pub struct Retries {
    cache: std::sync::Mutex<Idempotency<Vec<u8>>>,
    answered: tokio::sync::Notify,
}

/// Settles a running key however its task ends: answered, failed, or
/// panicked (dropped while still set: forgotten, so no retry waits on it
/// for ever).
struct Settle {
    retries: std::sync::Arc<Retries>,
    key: Option<Key>,
}

impl Settle {
    fn done(mut self, answer: &Result<Vec<u8>, tonic::Status>) {
        if let Some(key) = self.key.take() {
            match answer {
                Ok(bytes) => self
                    .retries
                    .cache()
                    .handle_done(&key, bytes.clone(), Instant::now()),
                Err(_) => self.retries.cache().handle_forget(&key),
            }
            self.retries.answered.notify_waiters();
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.retries.cache().handle_forget(&key);
            self.retries.answered.notify_waiters();
        }
    }
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            cache: std::sync::Mutex::new(Idempotency::new(RETRY_TTL, RETRY_CAPACITY)),
            answered: tokio::sync::Notify::new(),
        }
    }
}

/// The digest a request is known by (its encoding, `request_id` and all).
pub fn digest(request: &impl prost::Message) -> [u8; 32] {
    *blake3::hash(&request.encode_to_vec()).as_bytes()
}

impl Retries {
    fn cache(&self) -> std::sync::MutexGuard<'_, Idempotency<Vec<u8>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `run` (call `call` of a request with `digest`) once per
    /// `request_id`: a retry gets the first call's answer, waiting for it if
    /// it still runs. The call runs to its end in a task of its own, even
    /// if its caller goes away (a retry then gets its answer); so does one
    /// without a `request_id`.
    pub async fn once<T, F>(
        self: &std::sync::Arc<Self>,
        call: &'static str,
        request_id: &str,
        digest: [u8; 32],
        run: F,
    ) -> Result<T, tonic::Status>
    where
        T: prost::Message + Default + 'static,
        F: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        if request_id.is_empty() {
            // To its end even if the caller goes (a chain half started by
            // a dropped call would have processes and no record).
            return tokio::spawn(run)
                .await
                .unwrap_or_else(|_| Err(ControlError::Panicked("a mutating call").into()));
        }
        if request_id.len() > MAX_REQUEST_ID {
            return Err(ControlError::InvalidArgument(format!(
                "request_id is {} bytes long; at most {MAX_REQUEST_ID}",
                request_id.len()
            ))
            .into());
        }
        let decode = |bytes: Vec<u8>| {
            T::decode(&bytes[..]).map_err(|e| {
                tonic::Status::from(ControlError::Process(format!(
                    "the kept answer of {call}: {e}"
                )))
            })
        };
        let key: Key = (call, request_id.to_string());
        let mut run = Some(run);
        loop {
            // Registered before the look, so an answer in between wakes it.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let begin = self.cache().handle_begin(&key, digest, Instant::now());
            match begin {
                Begin::Run => {
                    let Some(run) = run.take() else {
                        return Err(ControlError::Process("a retried call ran twice".into()).into());
                    };
                    let settle = Settle {
                        retries: self.clone(),
                        key: Some(key.clone()),
                    };
                    let task = tokio::spawn(async move {
                        let answer = run.await.map(|t| t.encode_to_vec());
                        settle.done(&answer);
                        answer
                    });
                    return match task.await {
                        Ok(answer) => answer.and_then(decode),
                        Err(_) => Err(ControlError::Panicked("a call with a request_id").into()),
                    };
                }
                Begin::Running => answered.await,
                Begin::Answer(answer) => return decode(answer),
                Begin::Reused => {
                    return Err(ControlError::InvalidArgument(format!(
                        "request_id {request_id:?} was used for another {call} request: a retry \
                         repeats its request exactly; a new request takes a new id"
                    ))
                    .into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Begin { id: u8, body: u8 },
        Done { id: u8, answer: u16 },
        Forget { id: u8 },
        Wait { ms: u16 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u8..2).prop_map(|(id, body)| Op::Begin { id, body }),
            (0u8..6, any::<u16>()).prop_map(|(id, answer)| Op::Done { id, answer }),
            (0u8..6).prop_map(|id| Op::Forget { id }),
            (0u16..400).prop_map(|ms| Op::Wait { ms }),
        ]
    }

    proptest! {
        /// Against a reference: a key's first request runs; while it runs
        /// the same request waits and another is refused; a failed one is
        /// forgotten (its retry runs again); once answered,
        /// the same request gets that answer until the TTL or the capacity
        /// drops it, after which it runs again; a running call is never
        /// dropped.
        #[test]
        fn retries_are_answered_once(ops in proptest::collection::vec(op(), 1..200)) {
            let ttl = Duration::from_millis(1000);
            let cap = 3;
            let mut sut = Idempotency::<u16>::new(ttl, cap);
            // The model: per id, (body, None while running | Some(answer, at)).
            let mut model: HashMap<u8, (u8, Option<(u16, Instant)>)> = HashMap::new();
            let mut order: Vec<(Instant, u8)> = Vec::new();
            let t0 = Instant::now();
            let mut now = t0;
            let expire = |model: &mut HashMap<u8, (u8, Option<(u16, Instant)>)>,
                          order: &mut Vec<(Instant, u8)>,
                          now: Instant| {
                order.retain(|(at, id)| {
                    let keep = now.saturating_duration_since(*at) < ttl;
                    if !keep { model.remove(id); }
                    keep
                });
                while order.len() > cap {
                    let (_, id) = order.remove(0);
                    model.remove(&id);
                }
            };
            for op in ops {
                match op {
                    Op::Wait { ms } => now += Duration::from_millis(ms.into()),
                    Op::Begin { id, body } => {
                        let key = ("Create", id.to_string());
                        let got = sut.handle_begin(&key, [body; 32], now);
                        expire(&mut model, &mut order, now);
                        let want = match model.get(&id) {
                            None => {
                                model.insert(id, (body, None));
                                Begin::Run
                            }
                            Some((b, _)) if *b != body => Begin::Reused,
                            Some((_, None)) => Begin::Running,
                            Some((_, Some((a, _)))) => Begin::Answer(*a),
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Forget { id } => {
                        sut.handle_forget(&("Create", id.to_string()));
                        if let Some((_, None)) = model.get(&id) {
                            model.remove(&id);
                        }
                    }
                    Op::Done { id, answer } => {
                        let key = ("Create", id.to_string());
                        sut.handle_done(&key, answer, now);
                        if let Some((_, slot @ None)) = model.get_mut(&id) {
                            *slot = Some((answer, now));
                            order.push((now, id));
                        }
                        expire(&mut model, &mut order, now);
                    }
                }
                prop_assert_eq!(sut.len(), model.len());
            }
        }
    }

    #[test]
    fn another_call_with_the_same_id_is_another_key() {
        let mut c = Idempotency::<u8>::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        assert_eq!(
            c.handle_begin(&("Create", "x".into()), [1; 32], now),
            Begin::Run
        );
        assert_eq!(
            c.handle_begin(&("Delete", "x".into()), [2; 32], now),
            Begin::Run
        );
    }
}
