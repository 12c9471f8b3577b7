//! A stage of the pipeline running on a thread of its own, fed in order
//! over a channel. Dropping it closes the channel and waits for the thread
//! to finish what it holds, so that its files are closed once the driver
//! is gone (a restart in the same process reopens them).

use std::sync::mpsc;
use std::thread::JoinHandle;

pub(crate) struct StageThread<T> {
    queue: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> StageThread<T> {
    /// Starts thread `name` running `body` over what is sent to it.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(mpsc::Receiver<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, incoming) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(incoming))?;
        Ok(StageThread {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `item`; false if the thread has stopped.
    pub fn send(&self, item: T) -> bool {
        self.queue.as_ref().is_some_and(|q| q.send(item).is_ok())
    }
}

impl<T> Drop for StageThread<T> {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
