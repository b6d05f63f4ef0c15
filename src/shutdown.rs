//! Graceful shutdown as a small type of its own: one [`ShutdownTrigger`],
//! any number of cloned [`Shutdown`] listeners.

use tokio::sync::watch;

/// Fires the shutdown. Dropping it fires it too, so no listener waits forever.
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Listens for the shutdown; cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// A new trigger and its first listener.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown has been triggered (or the trigger dropped).
    pub async fn triggered(&mut self) {
        // An error means the trigger was dropped, which also means stop.
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_see_the_trigger() {
        let (trigger, shutdown) = channel();
        let mut listener = shutdown.clone();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        listener.triggered().await;
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn dropping_the_trigger_releases_listeners() {
        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.triggered().await;
    }
}
