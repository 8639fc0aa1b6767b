//! Admission for a service's connections or transfers: a permit for each
//! (at most a named number at once), every task it spawns tracked, and one
//! bounded drain at shutdown. NBD, HTTP and TFTP all take their work
//! through an [`Admission`], so they stop the same way.
//!
//! A refusal is the caller's to answer (NBD closes, HTTP sends 503, TFTP an
//! error packet); it is logged once per burst through [`Burst`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{warn, Instrument};

/// How long a shutdown waits for a service's admitted work to finish before
/// giving up on peers that vanished (every service alike).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals closer together than this are one burst, logged once.
pub const BURST_QUIET: Duration = Duration::from_secs(10);

/// Refusals grouped into bursts: the first of a burst is logged, with how
/// many were refused, unlogged, since the last line. Pure (the clock comes in).
#[derive(Debug, Default)]
pub struct Burst {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Burst {
    /// One more refusal at `now`: `Some(n)` when it is to be logged, `n`
    /// counting it and the refusals not logged before it.
    pub fn refuse(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        match self.last_logged {
            Some(t) if now.saturating_duration_since(t) < BURST_QUIET => None,
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// One service's admitted work: at most `max` at once, every task tracked.
#[derive(Clone)]
pub struct Admission {
    service: &'static str,
    what: &'static str,
    max: usize,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    burst: Arc<Mutex<Burst>>,
}

impl Admission {
    /// `what` names one unit of work in the log ("connections", "transfers").
    pub fn new(service: &'static str, what: &'static str, max: usize) -> Admission {
        Admission {
            service,
            what,
            max,
            limit: Arc::new(Semaphore::new(max)),
            tasks: TaskTracker::new(),
            burst: Arc::new(Mutex::new(Burst::default())),
        }
    }

    /// A permit when fewer than `max` are admitted; else `None`, and the
    /// refusal is logged once per burst (naming `peer`, the first refused).
    pub fn try_admit(&self, peer: &dyn std::fmt::Display) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.limit.clone().try_acquire_owned() {
            return Some(p);
        }
        let logged = self.burst.lock().unwrap_or_else(|e| e.into_inner()).refuse(Instant::now());
        if let Some(refused) = logged {
            warn!(
                service = self.service,
                %peer,
                max = self.max,
                refused,
                "{} refused: {} {} at once already (refusals within {BURST_QUIET:?} of this one are not logged)",
                self.service,
                self.max,
                self.what
            );
        }
        None
    }

    /// Run `work` as a tracked task holding `permit` until it ends.
    pub fn spawn<F>(&self, permit: OwnedSemaphorePermit, span: tracing::Span, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(
            async move {
                work.await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Run `work` as a tracked task without a permit: short, self-bounded
    /// work such as answering a refused client.
    pub fn spawn_unlimited<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Admitted now (for tests and reports).
    pub fn in_use(&self) -> usize {
        self.max - self.limit.available_permits()
    }

    /// No more tasks; wait for those running, at most [`DRAIN_TIMEOUT`].
    /// `false` (and a warning) when some were still running then.
    pub async fn drain(&self) -> bool {
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tasks.wait()).await.is_err() {
            warn!(
                service = self.service,
                running = self.tasks.len(),
                timeout = ?DRAIN_TIMEOUT,
                "{}: some {} did not finish in time; abandoning them",
                self.service,
                self.what
            );
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_burst_logs_the_first_refusal_then_counts_until_quiet() {
        let t0 = Instant::now();
        let mut b = Burst::default();
        assert_eq!(b.refuse(t0), Some(1));
        assert_eq!(b.refuse(t0 + Duration::from_secs(1)), None);
        assert_eq!(b.refuse(t0 + Duration::from_secs(9)), None);
        // A refusal after the quiet interval starts the next burst and
        // reports the two held back before it.
        assert_eq!(b.refuse(t0 + BURST_QUIET), Some(3));
        assert_eq!(b.refuse(t0 + BURST_QUIET + Duration::from_secs(1)), None);
    }

    #[tokio::test]
    async fn test_admission_bounds_and_drains() {
        let a = Admission::new("test", "jobs", 2);
        let p1 = a.try_admit(&"x").unwrap();
        let p2 = a.try_admit(&"x").unwrap();
        assert!(a.try_admit(&"x").is_none(), "a third is refused");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        a.spawn(p1, tracing::Span::none(), async move {
            let _ = rx.await;
        });
        drop(p2);
        assert_eq!(a.in_use(), 1);
        let drained = tokio::spawn({
            let a = a.clone();
            async move { a.drain().await }
        });
        tokio::task::yield_now().await;
        assert!(!drained.is_finished(), "the drain waits for the running task");
        tx.send(()).unwrap();
        assert!(drained.await.unwrap());
        assert_eq!(a.in_use(), 0);
    }
}
