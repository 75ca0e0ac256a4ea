//! Asynchronous notifications: the platform's retry schedule and the
//! dispatcher that delivers what the ledger owes, and that moves shoppers
//! whose scheduled payment is due (so a late payment happens, and is
//! notified, whether or not anyone asks about it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::Simulator;
use crate::ledger::{NotificationRecord, NotifyStatus};

/// WeChat Pay's schedule: the delay before each retry after a failed
/// attempt, in seconds (15 retries, about 24 h in all). The first attempt
/// is made at once.
pub const RETRY_SCHEDULE_S: [u64; 15] = [
    15, 15, 30, 180, 600, 1_200, 1_800, 1_800, 1_800, 3_600, 10_800, 10_800, 10_800, 21_600, 21_600,
];

/// How often the dispatcher looks for due work when nothing woke it.
pub const TICK: Duration = Duration::from_millis(20);

/// The delay before the next attempt after `attempts_made` failed ones,
/// compressed by `time_scale` (1: real time); `None` once the schedule is
/// spent.
pub fn retry_delay(attempts_made: u32, time_scale: u32) -> Option<Duration> {
    let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
    RETRY_SCHEDULE_S
        .get(index)
        .map(|s| Duration::from_millis(s * 1_000 / u64::from(time_scale.max(1))))
}

/// Runs until dropped: on every wake or tick, pays the shoppers due and
/// starts the delivery of every notification due (one at a time each).
/// Deliveries are its children: dropping it (the server stopping) stops
/// them too.
pub(crate) async fn dispatch(simulator: Simulator) {
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = simulator.inner.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        while deliveries.try_join_next().is_some() {}
        let now = simulator.now();
        match simulator.inner.ledger.due_orders(now).await {
            Ok(due) => {
                for out_trade_no in due {
                    if let Err(error) = simulator.advance(&out_trade_no).await {
                        tracing::warn!(%out_trade_no, %error, "Scheduled payment not applied.");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "Due payments not read."),
        }
        let Some(notify_url) = simulator.inner.notify_url.clone() else {
            continue;
        };
        let due = match simulator
            .inner
            .ledger
            .due_notifications(simulator.now())
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "Due notifications not read.");
                continue;
            }
        };
        for record in due {
            let id = record.notification.notify_id.clone();
            if !lock(&in_flight).insert(id.clone()) {
                continue;
            }
            let (simulator, in_flight, url) =
                (simulator.clone(), in_flight.clone(), notify_url.clone());
            deliveries.spawn(async move {
                deliver(&simulator, &url, record).await;
                lock(&in_flight).remove(&id);
            });
        }
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One attempt (two under the duplicate fault), then its result recorded.
async fn deliver(simulator: &Simulator, url: &str, record: NotificationRecord) {
    let faults = simulator.inner.faults.current();
    let attempts = record.attempts + 1;
    let id = &record.notification.notify_id;
    let out_trade_no = &record.notification.out_trade_no;
    let (status, next_at) = if faults.lose_notifications {
        tracing::info!(%out_trade_no, notify_id = %id, "Notification lost (simulated).");
        (NotifyStatus::Lost, None)
    } else {
        let mut delivered = post(simulator, url, &record.body).await;
        if faults.duplicate_notifications {
            delivered |= post(simulator, url, &record.body).await;
        }
        if delivered {
            (NotifyStatus::Delivered, None)
        } else {
            match retry_delay(attempts, simulator.inner.settings.time_scale) {
                Some(delay) => (NotifyStatus::Pending, Some(simulator.now() + delay)),
                None => (NotifyStatus::Abandoned, None),
            }
        }
    };
    tracing::debug!(%out_trade_no, notify_id = %id, attempts, ?status, "Notification attempted.");
    if let Err(error) = simulator
        .inner
        .ledger
        .record_attempt(id, attempts, status, next_at)
        .await
    {
        tracing::warn!(%out_trade_no, %error, "Notification attempt not recorded: it is repeated.");
    }
}

/// Whether the receiver answered 2xx.
async fn post(simulator: &Simulator, url: &str, body: &str) -> bool {
    let signed = qr_platform::signature::sign_fresh(
        simulator.inner.settings.key.expose().as_bytes(),
        simulator.now().unix_timestamp(),
        body.as_bytes(),
    );
    let mut headers = HeaderMap::new();
    signed.apply(&mut headers);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    match simulator
        .inner
        .http
        .post(url)
        .headers(headers)
        .body(body.to_owned())
        .send()
        .await
    {
        Ok(answer) => answer.status().is_success(),
        Err(error) => {
            tracing::debug!(%error, "Notification not answered.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_wechats_compressed_by_the_time_scale_and_ends() {
        assert_eq!(retry_delay(0, 1), None);
        assert_eq!(retry_delay(1, 1), Some(Duration::from_secs(15)));
        assert_eq!(retry_delay(3, 1), Some(Duration::from_secs(30)));
        assert_eq!(retry_delay(4, 1), Some(Duration::from_secs(180)));
        assert_eq!(retry_delay(15, 1), Some(Duration::from_secs(21_600)));
        assert_eq!(retry_delay(16, 1), None);
        assert_eq!(retry_delay(1, 1_000), Some(Duration::from_millis(15)));
        assert_eq!(retry_delay(15, 1_000), Some(Duration::from_millis(21_600)));
        let day: u64 = RETRY_SCHEDULE_S.iter().sum();
        assert_eq!(day, 86_640, "about 24 h of retries");
    }
}
