//! The delivery worker: claims due deliveries, POSTs them, and records
//! each attempt.
//!
//! One loop claims as many due deliveries as it has free slots, and each
//! claimed delivery is sent by a task of its own. Slots are bounded twice:
//! `max_in_flight` over all endpoints, and `max_in_flight_per_endpoint` for
//! each endpoint, enforced in the claim itself (see
//! [`crate::store::claim_due`]). So a slow or dead merchant holds at most
//! its own few slots, for at most the request timeout each, and every
//! other merchant's deliveries keep flowing through the rest.
//!
//! Results go to a recorder task that writes them in batches (one
//! statement for whatever has finished), because a commit per request
//! would cap throughput at the disk's flush rate. The loop sleeps until
//! the next delivery falls due, the poll interval passes, a request
//! finishes, or it is woken: by PostgreSQL `LISTEN` when the consumer or a
//! redelivery commits new due rows, and by the recorder when it schedules
//! a retry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;
use switch_core::notify::{self, AfterFailure};
use switch_core::{Clock, SharedClock};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{NotifierConfig, RetryConfig, validate_url};
use crate::metrics::{Metrics, Outcome};
use crate::resolver::AdmittedOnly;
use crate::signature::{EVENT_ID_HEADER, SIGNATURE_HEADER, sign};
use crate::store::{self, Attempt, Claimed, NextState};
use switch_core::destination::Destinations;

/// Most attempts written in one statement.
const RECORD_BATCH: usize = 500;
/// Most of a response body read (then dropped): enough for any sensible
/// acknowledgement, so the connection can be reused, and no more.
const MAX_RESPONSE_DRAIN: usize = 64 * 1024;
/// Longest error text kept on a delivery.
const MAX_ERROR_LEN: usize = 300;
/// How long a stopping worker lets requests in flight finish before it
/// gives their deliveries back, unless the service's drain says otherwise
/// ([`Worker::shutdown_grace`]).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a database error before the worker tries again.
const ERROR_PAUSE: Duration = Duration::from_millis(500);

/// The delay before the next attempt after `failures` failed attempts in
/// the current budget, scaled by `jitter_permille` (800..=1200 for ±20%):
/// `switch_core::notify::DeliveryRetry::backoff`.
pub fn backoff(retry: &RetryConfig, failures: u32, jitter_permille: u64) -> Duration {
    retry.rule().backoff(failures, jitter_permille)
}

/// Where a failed attempt leaves a delivery that had `budget_used` failed
/// attempts in its budget before it (`DeliveryRetry::after_failure`), with
/// the jitter drawn here so the rule stays pure.
pub fn after_failure(retry: &RetryConfig, budget_used: u32) -> NextState {
    let jitter = rand::rng().random_range(notify::JITTER_PERMILLE);
    match retry.rule().after_failure(budget_used, jitter) {
        AfterFailure::Retry(delay) => NextState::Retry(delay),
        AfterFailure::DeadLettered => NextState::DeadLettered,
    }
}

/// The HTTP client of every delivery: rustls with the Mozilla roots,
/// certificates always verified (there is no setting to turn that off),
/// timeouts from the configuration, no redirects (a signed webhook is
/// never sent to an address the merchant did not register), and names
/// resolved to admitted addresses only ([`AdmittedOnly`]).
pub fn http_client(config: &NotifierConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(AdmittedOnly {
            destinations: config.destinations(),
        }))
        .use_rustls_tls()
        .connect_timeout(config.connect_timeout())
        .timeout(config.request_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(config.max_in_flight_per_endpoint)
        .tcp_nodelay(true)
        .user_agent(concat!("pos-switch-notifier/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One finished attempt on its way to the recorder.
struct Done {
    claimed: Claimed,
    attempt: Attempt,
}

pub struct Worker {
    pool: PgPool,
    config: NotifierConfig,
    client: reqwest::Client,
    wake: Arc<Notify>,
    metrics: Metrics,
    /// What is due, when an attempt started and finished, when a retry is.
    clock: SharedClock,
    /// How long a stopping worker lets requests in flight finish.
    shutdown_grace: Duration,
}

impl Worker {
    /// The service's grace period (`[shutdown]`): what the requests in
    /// flight get to finish when the worker stops.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// A worker woken through `wake` (see [`listen`]).
    pub fn new(
        pool: PgPool,
        config: NotifierConfig,
        wake: Arc<Notify>,
        clock: SharedClock,
    ) -> Result<Worker, reqwest::Error> {
        Ok(Worker {
            client: http_client(&config)?,
            pool,
            config,
            wake,
            metrics: Metrics::new(),
            clock,
            shutdown_grace: SHUTDOWN_GRACE,
        })
    }

    /// Delivers until `stop`; then lets requests in flight finish for a
    /// short grace, gives the rest back, and records what finished.
    pub async fn run(self, stop: CancellationToken) {
        let (results, results_rx) = mpsc::channel(self.config.max_in_flight);
        let recorder = tokio::spawn(record(
            self.pool.clone(),
            results_rx,
            self.wake.clone(),
            self.metrics.clone(),
            stop.clone(),
        ));
        let mut slots = Slots::default();
        let max_in_flight = self.config.max_in_flight;
        let per_endpoint =
            i32::try_from(self.config.max_in_flight_per_endpoint).unwrap_or(i32::MAX);
        let mut wake_at: Option<tokio::time::Instant> = None;
        while !stop.is_cancelled() {
            while let Some(done) = slots.tasks.try_join_next_with_id() {
                slots.finished(done);
            }
            let free = max_in_flight.saturating_sub(slots.tasks.len());
            let mut maybe_more = false;
            if free > 0 {
                let busy = slots.busy();
                let limit = i64::try_from(free).unwrap_or(i64::MAX);
                let claimed = store::claim_due(
                    &self.pool,
                    &busy,
                    per_endpoint,
                    limit,
                    self.config.lease(),
                    self.clock.now(),
                );
                match claimed.await {
                    Ok(claimed) => {
                        maybe_more = claimed.len() == free;
                        for claimed in claimed {
                            self.start(&mut slots, claimed, results.clone());
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Due deliveries could not be claimed.");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(ERROR_PAUSE) => continue,
                        }
                    }
                }
            }
            if maybe_more {
                // Every free slot was filled; wait only for one to free up.
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(done) = slots.tasks.join_next_with_id() => slots.finished(done),
                }
                continue;
            }
            // When the next delivery not yet due falls due. Only a wake-up
            // or the timer can change it (new rows, a scheduled retry, an
            // expired lease); a finished request cannot, so it is not read
            // again after one.
            if wake_at.is_none() {
                let poll = self.config.poll_interval();
                let wait = match store::next_due_in(&self.pool, self.clock.now()).await {
                    Ok(Some(next)) => next.min(poll),
                    Ok(None) => poll,
                    Err(error) => {
                        tracing::warn!(%error, "Next due delivery could not be read.");
                        poll
                    }
                };
                wake_at = Some(tokio::time::Instant::now() + wait);
            }
            let deadline = wake_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => wake_at = None,
                Some(done) = slots.tasks.join_next_with_id(), if !slots.tasks.is_empty() => {
                    slots.finished(done);
                }
                () = tokio::time::sleep_until(deadline) => wake_at = None,
            }
        }
        self.drain(slots, results, recorder).await;
    }

    fn start(&self, slots: &mut Slots, claimed: Claimed, results: mpsc::Sender<Done>) {
        let client = self.client.clone();
        let retry = self.config.retry;
        let destinations = self.config.destinations();
        let metrics = self.metrics.clone();
        let clock = self.clock.clone();
        let (endpoint_id, delivery_id, token) = (
            claimed.endpoint_id,
            claimed.delivery_id,
            claimed.lease_token,
        );
        let handle = slots.tasks.spawn(async move {
            metrics.request_started();
            let attempt = send(&client, &claimed, &retry, destinations, clock.as_ref()).await;
            metrics.request_finished();
            // The recorder outlives every task; a closed channel means the
            // process is going down and the lease brings the delivery back.
            let _ = results.send(Done { claimed, attempt }).await;
        });
        *slots.per_endpoint.entry(endpoint_id).or_default() += 1;
        slots
            .running
            .insert(handle.id(), (endpoint_id, delivery_id, token));
    }

    async fn drain(
        self,
        mut slots: Slots,
        results: mpsc::Sender<Done>,
        recorder: tokio::task::JoinHandle<()>,
    ) {
        let grace = tokio::time::sleep(self.shutdown_grace.min(self.config.request_timeout()));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                done = slots.tasks.join_next_with_id() => match done {
                    Some(done) => slots.finished(done),
                    None => break,
                },
                () = &mut grace => {
                    slots.tasks.abort_all();
                    while let Some(done) = slots.tasks.join_next_with_id().await {
                        slots.finished(done);
                    }
                    break;
                }
            }
        }
        // Deliveries whose requests were cut short are given back at once;
        // the merchant may have received one, which `Switch-Event-Id` lets
        // it recognise when it comes again.
        let unfinished: Vec<(Uuid, Uuid)> = slots.aborted;
        if !unfinished.is_empty() {
            match store::release(&self.pool, &unfinished, self.clock.now()).await {
                Ok(released) => tracing::info!(released, "Unfinished deliveries given back."),
                Err(error) => tracing::warn!(
                    %error,
                    "Unfinished deliveries could not be given back; their leases will expire."
                ),
            }
        }
        drop(results);
        let _ = recorder.await;
    }
}

/// What the worker has in flight.
#[derive(Default)]
struct Slots {
    tasks: JoinSet<()>,
    /// Requests in flight per endpoint.
    per_endpoint: HashMap<Uuid, usize>,
    /// Task → (endpoint, delivery, lease token).
    running: HashMap<tokio::task::Id, (Uuid, Uuid, Uuid)>,
    /// Claims whose tasks were aborted before they finished.
    aborted: Vec<(Uuid, Uuid)>,
}

impl Slots {
    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (id, completed) = match done {
            Ok((id, ())) => (id, true),
            Err(error) => (error.id(), false),
        };
        let Some((endpoint_id, delivery_id, token)) = self.running.remove(&id) else {
            return;
        };
        if let Some(count) = self.per_endpoint.get_mut(&endpoint_id) {
            *count -= 1;
            if *count == 0 {
                self.per_endpoint.remove(&endpoint_id);
            }
        }
        if !completed {
            self.aborted.push((delivery_id, token));
        }
    }

    fn busy(&self) -> Vec<(Uuid, i32)> {
        self.per_endpoint
            .iter()
            .map(|(id, n)| (*id, i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect()
    }
}

/// Sends one delivery and decides where the attempt leaves it.
async fn send(
    client: &reqwest::Client,
    claimed: &Claimed,
    retry: &RetryConfig,
    destinations: Destinations,
    clock: &dyn Clock,
) -> Attempt {
    let started_at = clock.now();
    // Registered under a laxer setting, or as an address the resolver never
    // sees: checked again before anything is sent, and a failed attempt.
    let (status, error) = match validate_url(&claimed.url, destinations) {
        Err(reason) => (None, Some(format!("destination refused: {reason}"))),
        Ok(()) => post(client, claimed, started_at).await,
    };
    let budget_used = u32::try_from(claimed.budget_used).unwrap_or(0);
    let next = match error {
        None => NextState::Delivered,
        Some(_) => after_failure(retry, budget_used),
    };
    Attempt {
        delivery_id: claimed.delivery_id,
        lease_token: claimed.lease_token,
        next,
        started_at,
        finished_at: clock.now(),
        status,
        error,
    }
}

/// Posts the signed delivery; the HTTP status and, unless it is a
/// success, what failed.
async fn post(
    client: &reqwest::Client,
    claimed: &Claimed,
    started_at: time::OffsetDateTime,
) -> (Option<u16>, Option<String>) {
    let signature = sign(
        claimed.secret.expose(),
        started_at.unix_timestamp(),
        claimed.body.as_bytes(),
    );
    let result = client
        .post(&claimed.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, claimed.event_id.to_string())
        .body(claimed.body.clone())
        .send()
        .await;
    match result {
        Ok(mut response) => {
            let status = response.status();
            let mut drained = 0;
            while drained < MAX_RESPONSE_DRAIN {
                match response.chunk().await {
                    Ok(Some(chunk)) => drained += chunk.len(),
                    Ok(None) | Err(_) => break,
                }
            }
            let error = (!status.is_success()).then(|| format!("HTTP {status}"));
            (Some(status.as_u16()), error)
        }
        Err(error) => (None, Some(describe(&error))),
    }
}

/// A request error as one line without the URL (listed beside it
/// anyway): what failed and the innermost cause.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response failed"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let mut text = format!("{kind}: {cause}");
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Writes finished attempts in batches, then counts and logs the ones
/// written. A batch is retried while the database is unreachable; once
/// stopping, it is given up after a few tries (the leases bring those
/// deliveries back).
async fn record(
    pool: PgPool,
    mut results: mpsc::Receiver<Done>,
    wake: Arc<Notify>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    while let Some(first) = results.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match results.try_recv() {
                Ok(done) => batch.push(done),
                Err(_) => break,
            }
        }
        let attempts: Vec<Attempt> = batch.iter().map(|d| d.attempt.clone()).collect();
        let mut failures = 0;
        let recorded: HashSet<Uuid> = loop {
            match store::record_attempts(&pool, &attempts).await {
                Ok(ids) => break ids.into_iter().collect(),
                Err(error) => {
                    failures += 1;
                    if stop.is_cancelled() && failures >= 3 {
                        tracing::warn!(
                            %error,
                            size = batch.len(),
                            "Attempts not recorded at shutdown; their leases will bring them back."
                        );
                        break HashSet::new();
                    }
                    tracing::warn!(%error, size = batch.len(), "Attempts could not be recorded; retrying.");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        };
        let mut retry_scheduled = false;
        for done in &batch {
            if !recorded.contains(&done.claimed.delivery_id) {
                tracing::debug!(
                    delivery_id = %done.claimed.delivery_id,
                    "Attempt not recorded: its lease had passed to another claim."
                );
                continue;
            }
            retry_scheduled |= matches!(done.attempt.next, NextState::Retry(_));
            report(&metrics, done);
        }
        if retry_scheduled {
            // The worker may be asleep until its poll interval; the retry
            // may be due sooner.
            wake.notify_one();
        }
    }
}

fn report(metrics: &Metrics, done: &Done) {
    let Done { claimed, attempt } = done;
    let attempts = u64::try_from(claimed.attempts).unwrap_or(0) + 1;
    let error = attempt.error.as_deref().unwrap_or("");
    match attempt.next {
        NextState::Delivered => {
            metrics.recorded(Outcome::Delivered, attempts);
            let first = claimed.first_attempt_at.unwrap_or(attempt.started_at);
            metrics.delivered_after(
                millis(attempt.finished_at - claimed.occurred_at),
                millis(attempt.finished_at - first),
            );
            tracing::debug!(
                delivery_id = %claimed.delivery_id,
                event_id = %claimed.event_id,
                merchant_id = %claimed.merchant_id,
                webhook_type = %claimed.event_type,
                attempts,
                "Webhook delivered."
            );
        }
        NextState::Retry(delay) => {
            metrics.recorded(Outcome::Retried, attempts);
            tracing::warn!(
                delivery_id = %claimed.delivery_id,
                event_id = %claimed.event_id,
                merchant_id = %claimed.merchant_id,
                url = %claimed.url,
                attempts,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error,
                "Webhook attempt failed; will retry."
            );
        }
        NextState::DeadLettered => {
            metrics.recorded(Outcome::DeadLettered, attempts);
            tracing::error!(
                delivery_id = %claimed.delivery_id,
                event_id = %claimed.event_id,
                merchant_id = %claimed.merchant_id,
                webhook_type = %claimed.event_type,
                url = %claimed.url,
                attempts,
                error,
                "Webhook dead-lettered after its last attempt."
            );
        }
    }
}

fn millis(duration: time::Duration) -> u64 {
    u64::try_from(duration.whole_milliseconds()).unwrap_or(0)
}

/// Wakes the worker whenever a transaction that made deliveries due
/// commits (`pg_notify` on `channel`), until `stop`. Notifications sent
/// while the listener is reconnecting are lost, so it wakes once after each
/// (re)connection; the poll interval covers the rest.
pub async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>, stop: CancellationToken) {
    let on_notification = |_: &str| wake.notify_one();
    switch_platform::db::listen(pool, channel, stop, || wake.notify_one(), on_notification).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(initial: u64, max: u64, attempts: u32) -> RetryConfig {
        RetryConfig {
            initial_delay_ms: initial,
            max_delay_ms: max,
            max_attempts: attempts,
        }
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
        let r = retry(1_000, 300_000, 12);
        let delays: Vec<u64> = (1..=11)
            .map(|n| u64::try_from(backoff(&r, n, 1_000).as_millis()).unwrap())
            .collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        assert_eq!(backoff(&r, 1_000, 1_000), Duration::from_millis(300_000));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let r = retry(50, 10_000, 12);
        assert_eq!(backoff(&r, 2, 800), Duration::from_millis(80));
        assert_eq!(backoff(&r, 2, 1_200), Duration::from_millis(120));
        for _ in 0..1_000 {
            match after_failure(&r, 2) {
                NextState::Retry(delay) => {
                    assert!((160..=240).contains(&delay.as_millis()), "{delay:?}");
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_last_attempt_of_a_budget_dead_letters() {
        let r = retry(50, 1_000, 3);
        assert!(matches!(after_failure(&r, 0), NextState::Retry(_)));
        assert!(matches!(after_failure(&r, 1), NextState::Retry(_)));
        assert_eq!(after_failure(&r, 2), NextState::DeadLettered);
        let once = retry(50, 1_000, 1);
        assert_eq!(after_failure(&once, 0), NextState::DeadLettered);
    }

    #[test]
    fn the_client_builds_with_verified_tls() {
        http_client(&NotifierConfig::default()).unwrap();
    }
}
