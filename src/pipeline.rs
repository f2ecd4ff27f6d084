//! Pipelines: stages on threads joined by bounded channels, and the one rule
//! that keeps them from hanging.
//!
//! **The rule.** A stage may block on a channel, a buffer pool, a pipe, a
//! child process or a remote peer. Before anyone joins a stage, whatever it
//! may be blocked on is released: its channels are closed or the pipeline's
//! [`Cancel`] is fired, which every blocking wait of a stage also watches.
//! An error or a panic in any stage (or in the body that drives them)
//! fires the cancel *before* the joins, so a producer parked on a full
//! channel, or on a recycled buffer that the failed consumer will never
//! return, wakes up and stops.
//!
//! [`scope`] is `std::thread::scope` with that rule built in: stages spawned
//! through it fire the cancel when they fail or panic, and the body's error
//! or panic fires it before the scope joins its threads. Blocking waits go
//! through [`Cancel::recv`] and [`Cancel::send`] (or [`Cancel::select_recv`])
//! instead of the channel's own `recv`/`send`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use crossbeam_channel::{Receiver, Select, Sender};

/// Nothing is ever sent on the cancel channel: dropping its only sender
/// disconnects it, which wakes every `select` watching it at once.
enum Never {}

#[derive(Debug)]
struct Inner {
    cancelled: AtomicBool,
    closer: Mutex<Option<Sender<Never>>>,
    closed: Receiver<Never>,
}

impl std::fmt::Debug for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// A pipeline's stop signal, shared by all its stages (clones are the same
/// signal). Once fired it stays fired.
///
/// A child ([`Cancel::child`]) is fired by its own `cancel` or by any
/// ancestor's: a reader abandoned by one consumer stops without stopping the
/// rest of the pipeline, while the pipeline's cancel still stops the reader.
#[derive(Debug, Clone)]
pub struct Cancel {
    own: Arc<Inner>,
    ancestors: Vec<Arc<Inner>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

/// Why a wait ended without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The other end of the channel is gone.
    Closed,
    /// The pipeline's cancel fired.
    Cancelled,
}

impl Inner {
    fn new() -> Arc<Inner> {
        let (closer, closed) = crossbeam_channel::bounded(0);
        Arc::new(Inner {
            cancelled: AtomicBool::new(false),
            closer: Mutex::new(Some(closer)),
            closed,
        })
    }

    fn fire(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let mut closer = match self.closer.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        closer.take();
    }
}

impl Cancel {
    /// A new, unfired signal.
    pub fn new() -> Cancel {
        Cancel {
            own: Inner::new(),
            ancestors: Vec::new(),
        }
    }

    /// A signal fired by its own [`Cancel::cancel`] or by this one's.
    pub fn child(&self) -> Cancel {
        let mut ancestors = self.ancestors.clone();
        ancestors.push(self.own.clone());
        Cancel {
            own: Inner::new(),
            ancestors,
        }
    }

    /// Fires the signal: every wait watching it (or a child of it) returns
    /// [`Stopped::Cancelled`].
    pub fn cancel(&self) {
        self.own.fire();
    }

    /// True once this signal or an ancestor fired.
    pub fn is_cancelled(&self) -> bool {
        self.signals()
            .any(|inner| inner.cancelled.load(Ordering::SeqCst))
    }

    fn signals(&self) -> impl Iterator<Item = &Arc<Inner>> {
        std::iter::once(&self.own).chain(self.ancestors.iter())
    }

    fn watch<'a>(&'a self, select: &mut Select<'a>) {
        for inner in self.signals() {
            select.recv(&inner.closed);
        }
    }

    /// Receives from `rx`, or stops when the channel closes or the signal
    /// fires.
    ///
    /// # Errors
    /// [`Stopped`] says which.
    pub fn recv<T>(&self, rx: &Receiver<T>) -> Result<T, Stopped> {
        self.select_recv(&[rx]).map(|(_, value)| value)
    }

    /// Receives from whichever of `receivers` is ready first; returns its
    /// index and the value.
    ///
    /// # Errors
    /// [`Stopped::Closed`] when the ready channel is closed,
    /// [`Stopped::Cancelled`] when the signal fired.
    pub fn select_recv<T>(&self, receivers: &[&Receiver<T>]) -> Result<(usize, T), Stopped> {
        if self.is_cancelled() {
            return Err(Stopped::Cancelled);
        }
        let mut select = Select::new();
        for rx in receivers {
            select.recv(rx);
        }
        self.watch(&mut select);
        let op = select.select();
        let index = op.index();
        if index >= receivers.len() {
            // The cancel channel never carries a value: this is its close.
            let _ = op.recv(&self.signal_at(index - receivers.len()).closed);
            return Err(Stopped::Cancelled);
        }
        op.recv(receivers[index])
            .map(|value| (index, value))
            .map_err(|_| Stopped::Closed)
    }

    fn signal_at(&self, index: usize) -> &Inner {
        match index {
            0 => &self.own,
            i => &self.ancestors[i - 1],
        }
    }

    /// Sends `value` on `tx`, or gives it back when the channel closes or
    /// the signal fires.
    ///
    /// # Errors
    /// The value and [`Stopped`].
    pub fn send<T>(&self, tx: &Sender<T>, value: T) -> Result<(), (T, Stopped)> {
        if self.is_cancelled() {
            return Err((value, Stopped::Cancelled));
        }
        let mut select = Select::new();
        select.send(tx);
        self.watch(&mut select);
        let op = select.select();
        let index = op.index();
        if index > 0 {
            let _ = op.recv(&self.signal_at(index - 1).closed);
            return Err((value, Stopped::Cancelled));
        }
        op.send(tx, value)
            .map_err(|e| (e.into_inner(), Stopped::Closed))
    }

    /// A guard that fires the signal when dropped, unless disarmed: held
    /// across code that may fail or panic before the joins.
    pub fn fire_on_drop(&self) -> FireOnDrop {
        FireOnDrop {
            cancel: Some(self.clone()),
        }
    }
}

/// Fires its [`Cancel`] when dropped (on an early return or while
/// unwinding), unless [`FireOnDrop::disarm`] was called.
#[derive(Debug)]
pub struct FireOnDrop {
    cancel: Option<Cancel>,
}

impl FireOnDrop {
    /// The guarded code finished normally: do not fire.
    pub fn disarm(mut self) {
        self.cancel = None;
    }
}

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
    }
}

/// The stages of one [`scope`].
#[derive(Debug)]
pub struct Stages<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    cancel: Cancel,
}

/// A stage that panicked; its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked(pub &'static str);

/// A running stage of a [`scope`].
#[derive(Debug)]
pub struct Stage<'scope, T> {
    name: &'static str,
    handle: ScopedJoinHandle<'scope, T>,
}

impl<T> Stage<'_, T> {
    /// Waits for the stage.
    ///
    /// # Errors
    /// [`Panicked`] with the stage's name.
    pub fn join(self) -> Result<T, Panicked> {
        self.handle.join().map_err(|_| Panicked(self.name))
    }
}

impl<'scope, 'env> Stages<'scope, 'env> {
    /// The pipeline's signal, for the stages' waits.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Starts a stage that returns a `Result`: an `Err` or a panic fires the
    /// pipeline's cancel as the stage ends, before anyone joins it.
    pub fn spawn<T, E, F>(&self, name: &'static str, stage: F) -> Stage<'scope, Result<T, E>>
    where
        F: FnOnce() -> Result<T, E> + Send + 'scope,
        T: Send + 'scope,
        E: Send + 'scope,
    {
        let cancel = self.cancel.clone();
        let handle = self.scope.spawn(move || {
            let guard = cancel.fire_on_drop();
            let result = stage();
            if result.is_ok() {
                guard.disarm();
            }
            result
        });
        Stage { name, handle }
    }
}

/// Runs `body` with a thread scope whose stages share `cancel`. When the
/// body returns an error or panics, the cancel fires before the scope joins
/// the stages still running, so none of them stays blocked on a channel or
/// a buffer the body will never serve.
///
/// # Errors
/// The body's error.
pub fn scope<'env, T, E, F>(cancel: &Cancel, body: F) -> Result<T, E>
where
    F: for<'scope> FnOnce(&Stages<'scope, 'env>) -> Result<T, E>,
{
    std::thread::scope(|s| {
        let stages = Stages {
            scope: s,
            cancel: cancel.clone(),
        };
        let guard = cancel.fire_on_drop();
        let result = body(&stages);
        if result.is_ok() {
            guard.disarm();
        }
        result
    })
}

/// An error that may be only the consequence of another stage's failure:
/// the stage stopped because the cancel fired or a channel closed. Users
/// must be told the cause, never the consequence.
pub trait Consequence {
    /// True for "stopped because something else failed".
    fn is_consequence(&self) -> bool;
}

/// Both results, or the error that caused the failure: an error that is
/// not a consequence wins over one that is, else the first.
///
/// # Errors
/// The cause among the two errors.
pub fn both<A, B, E: Consequence>(a: Result<A, E>, b: Result<B, E>) -> Result<(A, B), E> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(a), Err(b)) if a.is_consequence() && !b.is_consequence() => Err(b),
        (Err(a), Err(_)) => Err(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    enum E {
        Cause,
        Stopped,
    }

    impl Consequence for E {
        fn is_consequence(&self) -> bool {
            *self == E::Stopped
        }
    }

    #[test]
    fn both_reports_the_cause_not_the_consequence() {
        assert_eq!(
            both::<(), (), _>(Err(E::Stopped), Err(E::Cause)),
            Err(E::Cause)
        );
        assert_eq!(
            both::<(), (), _>(Err(E::Cause), Err(E::Stopped)),
            Err(E::Cause)
        );
        assert_eq!(
            both::<(), (), _>(Err(E::Stopped), Err(E::Stopped)),
            Err(E::Stopped)
        );
        assert_eq!(both::<(), u8, _>(Err(E::Stopped), Ok(1)), Err(E::Stopped));
        assert_eq!(both::<u8, u8, E>(Ok(1), Ok(2)), Ok((1, 2)));
    }

    #[test]
    fn cancel_wakes_a_blocked_receiver() {
        let cancel = Cancel::new();
        let (_tx, rx) = bounded::<u32>(1);
        let waiter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || cancel.recv(&rx))
        };
        std::thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        assert_eq!(waiter.join().ok(), Some(Err(Stopped::Cancelled)));
    }

    #[test]
    fn cancel_wakes_a_blocked_sender_and_returns_the_value() {
        let cancel = Cancel::new();
        let (tx, _rx) = bounded::<u32>(0);
        let waiter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || cancel.send(&tx, 7))
        };
        std::thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        assert_eq!(waiter.join().ok(), Some(Err((7, Stopped::Cancelled))));
    }

    #[test]
    fn values_and_closes_pass_through() {
        let cancel = Cancel::new();
        let (tx, rx) = bounded::<u32>(1);
        assert!(cancel.send(&tx, 3).is_ok());
        assert_eq!(cancel.recv(&rx), Ok(3));
        drop(tx);
        assert_eq!(cancel.recv(&rx), Err(Stopped::Closed));
        let (tx, rx) = bounded::<u32>(1);
        drop(rx);
        assert_eq!(cancel.send(&tx, 4), Err((4, Stopped::Closed)));
    }

    #[test]
    fn a_parent_fires_its_child_but_not_the_reverse() {
        let parent = Cancel::new();
        let child = parent.child();
        let grandchild = child.child();
        child.cancel();
        assert!(child.is_cancelled() && grandchild.is_cancelled());
        assert!(!parent.is_cancelled());
        let other = parent.child();
        let (_tx, rx) = bounded::<u32>(1);
        let waiter = {
            let other = other.clone();
            std::thread::spawn(move || other.recv(&rx))
        };
        std::thread::sleep(Duration::from_millis(20));
        parent.cancel();
        assert_eq!(waiter.join().ok(), Some(Err(Stopped::Cancelled)));
    }

    #[test]
    fn a_failing_body_releases_a_producer_blocked_on_a_full_channel() {
        let cancel = Cancel::new();
        let (tx, rx) = bounded::<u32>(1);
        let result: Result<(), &str> = scope(&cancel, |stages| {
            let c = stages.cancel().clone();
            stages.spawn("producer", move || -> Result<(), &str> {
                for i in 0.. {
                    if c.send(&tx, i).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            });
            // The receiver stays alive: only the cancel can wake the producer.
            let _first = rx.recv();
            Err("consumer failed")
        });
        assert_eq!(result, Err("consumer failed"));
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn a_failing_stage_fires_the_cancel_for_its_siblings() {
        let cancel = Cancel::new();
        let (_tx, rx) = bounded::<u32>(1);
        let result: Result<(), &str> = scope(&cancel, |stages| {
            let c = stages.cancel().clone();
            let waiter = stages.spawn("waiter", move || -> Result<(), &str> {
                match c.recv(&rx) {
                    Err(Stopped::Cancelled) => Err("cancelled"),
                    _ => Ok(()),
                }
            });
            let failing = stages.spawn("failing", || -> Result<(), &str> { Err("boom") });
            let failed = failing.join().map_err(|_| "panic")?;
            let waited = waiter.join().map_err(|_| "panic")?;
            failed.and(waited)
        });
        assert_eq!(result, Err("boom"));
    }

    #[test]
    fn a_panicking_stage_fires_the_cancel() {
        let cancel = Cancel::new();
        let (_tx, rx) = bounded::<u32>(1);
        let result: Result<(), Panicked> = scope(&cancel, |stages| {
            let c = stages.cancel().clone();
            let waiter = stages.spawn("waiter", move || -> Result<(), ()> {
                let _ = c.recv(&rx);
                Ok(())
            });
            let panicking = stages.spawn("panicking", || -> Result<(), ()> {
                panic!("stage panics on purpose");
            });
            assert_eq!(panicking.join().err(), Some(Panicked("panicking")));
            let _ = waiter.join()?;
            Ok(())
        });
        assert!(result.is_ok());
        assert!(cancel.is_cancelled());
    }
}
