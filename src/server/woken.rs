//! [`PolledWhenWoken`]: a future that is polled only after it asked to be, for futures
//! that share a task with a busier one.
//!
//! A connection's task selects over hyper's connection and its watchdog (timeouts,
//! shutdown). `select!` polls every branch each time the task wakes, and the task wakes
//! for every read and write of every request, while the watchdog has news only at its
//! deadlines: polling its timer and the shutdown channel on each wake cost about 2% of a
//! 1 KiB hit's instructions. Wrapped, the watchdog is polled when its own waker fired, and
//! a spurious poll costs one atomic swap and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps `future` (see the module documentation).
pub struct PolledWhenWoken<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once rather than on every poll.
    inner_waker: Waker,
}

/// Set by the inner future's waker; the outer task's waker is called after it is set.
struct Signal {
    woken: AtomicBool,
    outer: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.outer.wake();
    }
}

impl<F: Future> PolledWhenWoken<F> {
    pub fn new(future: F) -> PolledWhenWoken<F> {
        // Woken at first, so the first poll lets the future register what it waits for.
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            outer: AtomicWaker::new(),
        });
        PolledWhenWoken {
            future: Box::pin(future),
            inner_waker: Waker::from(Arc::clone(&signal)),
            signal,
        }
    }
}

impl<F: Future> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake between the two still reaches this task.
        this.signal.outer.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner = Context::from_waker(&this.inner_waker);
        this.future.as_mut().poll(&mut inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that counts its polls and is ready once told.
    struct Counted {
        polls: Arc<std::sync::atomic::AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<parking_lot::Mutex<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polls_the_future_only_after_its_own_wake() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(parking_lot::Mutex::new(None));
        let mut wrapped = PolledWhenWoken::new(Counted {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&registered),
        });
        let outer_woken = Arc::new(OuterFlag(AtomicBool::new(false)));
        let outer = Waker::from(Arc::clone(&outer_woken));
        let mut cx = Context::from_waker(&outer);

        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll reaches the future"
        );
        for _ in 0..5 {
            assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "spurious polls do not");

        ready.store(true, Ordering::SeqCst);
        registered
            .lock()
            .take()
            .expect("the future registered")
            .wake();
        assert!(
            outer_woken.0.load(Ordering::SeqCst),
            "its wake reaches the task"
        );
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    struct OuterFlag(AtomicBool);

    impl Wake for OuterFlag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
