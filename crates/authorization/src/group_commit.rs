//! Group commit: requests that arrive while a statement runs are gathered
//! by one writer task and executed together, as one multi-row statement in
//! one transaction, and each caller gets its own result.
//!
//! Nothing waits for a batch to fill: the writer executes as soon as it has
//! anything, and the next batch accumulates while a statement runs, so an
//! idle journal commits a lone request as fast as before and a busy one
//! commits many per round trip and per WAL flush.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::AuthorizationError;

/// The most requests one statement carries.
pub const MAX_BATCH: usize = 256;

/// Requests waiting for the writer before callers wait to hand theirs in.
const QUEUE: usize = 4 * MAX_BATCH;

type Reply<O> = oneshot::Sender<Result<O, Arc<sqlx::Error>>>;

/// A handle on one writer task; cloning shares the writer.
pub struct GroupCommit<I, O> {
    requests: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> GroupCommit<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
{
    /// Starts the writer task (on the current Tokio runtime). `execute`
    /// runs one batch as one transaction and returns one output per input,
    /// in the inputs' order; if it fails, every caller in the batch gets the
    /// error. The task ends when the last handle is dropped.
    pub fn spawn<F, Fut>(name: &'static str, mut execute: F) -> Self
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, sqlx::Error>> + Send,
    {
        let (requests, mut queue) = mpsc::channel::<(I, Reply<O>)>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = batch.drain(..).unzip();
                let size = inputs.len();
                // A panic fails its batch, not every batch after it.
                let executed = AssertUnwindSafe(execute(inputs))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(sqlx::Error::Protocol(format!("{name}: the batch panicked")))
                    });
                match executed {
                    Ok(outputs) if outputs.len() == size => {
                        for (reply, output) in replies.into_iter().zip(outputs) {
                            // A caller that gave up no longer listens.
                            let _ = reply.send(Ok(output));
                        }
                    }
                    Ok(outputs) => {
                        tracing::error!(
                            writer = name,
                            size,
                            outputs = outputs.len(),
                            "Group commit returned the wrong number of results."
                        );
                        let error = Arc::new(sqlx::Error::Protocol(format!(
                            "{name}: {} results for {size} requests",
                            outputs.len()
                        )));
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(writer = name, size, %error, "Group commit failed.");
                        let error = Arc::new(error);
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        GroupCommit { requests }
    }

    /// Hands `input` to the writer and waits for its batch to commit.
    pub async fn submit(&self, input: I) -> Result<O, AuthorizationError> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send((input, reply))
            .await
            .map_err(|_| AuthorizationError::JournalBatch(Arc::new(sqlx::Error::WorkerCrashed)))?;
        match result.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(AuthorizationError::JournalBatch(error)),
            // The writer ended (its runtime is shutting down) mid-batch.
            Err(_) => Err(AuthorizationError::JournalBatch(Arc::new(
                sqlx::Error::WorkerCrashed,
            ))),
        }
    }
}
