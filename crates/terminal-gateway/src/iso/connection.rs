//! One listener's connections, as the edge established them (TLS with the
//! terminal's certificate, or plain TCP for a lab): frames read by the
//! profile's length header, requests handled concurrently and answered as
//! they finish.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::Listener;
use super::handler::{self, Caller, Read, Uploads};
use crate::edge::EdgeStream;

/// Answers a connection may have ready ahead of what the socket takes.
const WRITE_BUFFER: usize = 16;

/// Serves the connections the edge established until `stop`, then waits
/// for each to answer what it was handling.
pub(super) async fn serve<S>(
    mut incoming: ReceiverStream<io::Result<EdgeStream<S>>>,
    listener: Arc<Listener>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sessions = JoinSet::new();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => next,
        };
        // Reap finished sessions so the set stays the size of the open
        // ones.
        while sessions.try_join_next().is_some() {}
        match next {
            Some(Ok(stream)) => {
                let caller = match stream.identity() {
                    Some(identity) => Caller::Certified(identity.clone()),
                    None => Caller::Lab,
                };
                sessions.spawn(session(stream, caller, listener.clone(), stop.clone()));
            }
            Some(Err(error)) => tracing::warn!(%error, "ISO 8583 connection failed at the edge."),
            None => break,
        }
    }
    drop(incoming);
    while sessions.join_next().await.is_some() {}
}

/// Reads frames until the terminal hangs up, a frame cannot be answered,
/// or `stop`; then lets every request in flight finish and its answer go
/// out before closing.
async fn session<S>(stream: S, caller: Caller, listener: Arc<Listener>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (answers, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_BUFFER);
    let write_task = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(listener.max_in_flight));
    let header_len = listener.profile.framing.length.size();
    // A batch upload being gathered: only this connection's, dropped with
    // it, so an upload cut off halfway is never forwarded.
    let mut uploads = Uploads::default();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut frame = vec![0u8; header_len];
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = reader.read_exact(&mut frame) => read,
        };
        if read.is_err() {
            // The terminal hung up (or the connection broke) between
            // frames: the normal end of a session.
            break;
        }
        let len = match listener.profile.frame_len(&frame) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(error) => {
                listener.metrics.closed_unreadable();
                tracing::warn!(%error, "ISO 8583 frame refused by its length header; connection closed.");
                break;
            }
        };
        frame.resize(len, 0);
        // A frame left half sent must not hold the shutdown.
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = reader.read_exact(&mut frame[header_len..]) => read,
        };
        if read.is_err() {
            tracing::info!("ISO 8583 connection closed in the middle of a frame.");
            break;
        }
        match handler::read(&listener, &caller, &frame, &mut uploads) {
            Read::Request(request) => {
                let (listener, answers) = (listener.clone(), answers.clone());
                tokio::spawn(async move {
                    if let Some(answer) = handler::answer(&listener, request).await {
                        let _ = answers.send(answer).await;
                    }
                    drop(permit);
                });
            }
            Read::Answer(answer) => {
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
            Read::Ignore => {}
            Read::Refused(refusal) => {
                tracing::info!(%refusal, "ISO 8583 terminal refused at the edge; connection closed.");
                break;
            }
            Read::Close(reason) => {
                listener.metrics.closed_unreadable();
                tracing::warn!(%reason, "ISO 8583 message cannot be answered; connection closed.");
                break;
            }
        }
    }
    drop(answers);
    let _ = write_task.await;
}
