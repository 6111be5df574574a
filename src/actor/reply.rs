//! The reply slot a call waits on.

use tokio::sync::oneshot;

use crate::Error;

/// Where a handler's reply goes: the caller's one-shot slot, or nowhere for
/// a cast.
#[derive(Debug)]
pub struct ReplyTo<R>(Option<oneshot::Sender<Result<R, Error>>>);

impl<R> ReplyTo<R> {
    /// A slot for a call, and the receiver the caller awaits.
    pub(crate) fn call() -> (Self, oneshot::Receiver<Result<R, Error>>) {
        let (tx, rx) = oneshot::channel();
        (ReplyTo(Some(tx)), rx)
    }

    /// No reply: a cast.
    pub(crate) fn cast() -> Self {
        ReplyTo(None)
    }

    /// Sends the outcome to the caller, if there is one still waiting.
    pub fn send(self, result: Result<R, Error>) {
        if let Some(tx) = self.0 {
            let _ = tx.send(result);
        }
    }

    /// Whether a caller was waiting and has given up.
    pub fn abandoned(&self) -> bool {
        self.0.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Whether this is a cast's slot.
    pub fn is_cast(&self) -> bool {
        self.0.is_none()
    }
}
