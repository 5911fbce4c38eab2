//! Threads of the disk tier's own that serve its calls from one queue: one set for reads,
//! one for writes.
//!
//! tokio's blocking pool hands each call to a thread it wakes for it and parks after, two
//! context switches per disk hit; profiled, those switches took about a third of a disk
//! hit's CPU. A thread here takes the next call as soon as it has finished one, so under
//! load it drains the queue without sleeping in between. Writes have threads of their own
//! (an fsync must not hold up reads), few of them: writes serialise on the store's lock,
//! and the blocking pool, given one thread per queued write, grew past 100 threads and 40
//! MiB while they waited there.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// The reader threads and their queue; the threads end when this is dropped.
pub struct Readers {
    queue: mpsc::Sender<Job>,
}

impl Readers {
    /// Starts `threads` threads (at least one) named `outpost-disk-{role}-N`.
    ///
    /// # Errors
    /// When the operating system refuses a thread.
    pub fn start(threads: usize, role: &str) -> std::io::Result<Readers> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("outpost-disk-{role}-{index}"))
                .spawn(move || loop {
                    // One reader waits on the queue; the others wait for the lock.
                    let job = match receiver.lock().recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    // A read that panics fails its own request (its reply is dropped),
                    // not the reader.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                })?;
        }
        Ok(Readers { queue: sender })
    }

    /// Runs `read` on a reader; `None` when it panicked or the readers are gone.
    pub async fn run<T, F>(&self, read: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(read());
        });
        self.queue.send(job).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_run_and_a_panic_fails_only_its_own() {
        let readers = Readers::start(2, "read").unwrap();
        assert_eq!(readers.run(|| 40 + 2).await, Some(42));
        let failed: Option<()> = readers.run(|| panic!("a broken read")).await;
        assert_eq!(failed, None);
        let many: Vec<_> = (0..64u64).map(|n| readers.run(move || n * 2)).collect();
        let results = futures_util::future::join_all(many).await;
        assert_eq!(results, (0..64u64).map(|n| Some(n * 2)).collect::<Vec<_>>());
    }
}
