//! `serve` against the real PostgreSQL and broker and a real HTTP server:
//! events published on the topics become signed webhooks, delivered once;
//! failures are retried with growing gaps, dead-lettered, listed and
//! redelivered; and a slow merchant does not hold back another.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{
    Behaviour, WebhookServer, acknowledgement_conflict, batch_conflict, confirmed, deliveries,
    eventually, merchant, merchant_paid, reversed, start,
};
use notifier::signature::{DEFAULT_TOLERANCE_S, verify};
use notifier::{EndpointConfig, NotifierConfig, RetryConfig};
use switch_platform::config::Secret;
use switch_platform::kafka::topics;
use switch_proto::v1::{
    ListFailedDeliveriesRequest, RedeliverRequest, RegisterEndpointRequest, redeliver_request,
};

const SECRET: &str = "whsec_integration_test_secret_0001";

fn endpoint(merchant_id: &str, url: String) -> EndpointConfig {
    EndpointConfig {
        merchant_id: merchant_id.to_owned(),
        url,
        secret: Secret::new(SECRET),
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_becomes_one_signed_webhook() {
    let server = WebhookServer::start().await;
    let m1 = merchant("MA");
    let config = NotifierConfig {
        endpoints: vec![endpoint(&m1, server.url("/hooks"))],
        ..NotifierConfig::default()
    };
    let notifier = start(config).await;

    // A confirmation by the terminal's own acknowledgement comes first on
    // the (single) partition: once the later events are delivered, it has
    // been processed, and must have produced nothing.
    let acknowledged = confirmed(
        &m1,
        "000001",
        switch_proto::v1::Evidence::TerminalAcknowledgement,
    );
    let orphan_confirmed = confirmed(&m1, "000002", switch_proto::v1::Evidence::Policy);
    let orphan_reversed = reversed(&m1, "000003");
    let ack_conflict = acknowledgement_conflict(&m1, "000004");
    let events = [
        &acknowledged,
        &orphan_confirmed,
        &orphan_reversed,
        &ack_conflict,
    ];
    for event in events {
        notifier.publish(topics::AUTHORIZATION_EVENTS, event).await;
    }
    let conflict_in_batch = batch_conflict(&m1, "000005");
    let paid = merchant_paid(&m1);
    notifier
        .publish(topics::SETTLEMENT_EVENTS, &conflict_in_batch)
        .await;
    notifier.publish(topics::SETTLEMENT_EVENTS, &paid).await;

    let received = server.wait_for("/hooks", 5).await;
    eventually("all five delivered", || async {
        let rows = deliveries(notifier.pool()).await;
        (rows.len() == 5 && rows.iter().all(|r| r.state == "delivered")).then_some(())
    })
    .await;

    let expected = [
        (&orphan_confirmed, "payment.confirmed"),
        (&orphan_reversed, "payment.reversed"),
        (&ack_conflict, "payment.conflict"),
        (&conflict_in_batch, "payment.conflict"),
        (&paid, "settlement.paid"),
    ];
    for (event, kind) in expected {
        let matching: Vec<_> = received
            .iter()
            .filter(|r| r.event_id == event.event_id)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{kind} {} arrived {} times",
            event.event_id,
            matching.len()
        );
        let request = matching[0];
        assert_eq!(request.content_type, "application/json");
        verify(
            SECRET,
            &request.signature,
            &request.body,
            now_s(),
            DEFAULT_TOLERANCE_S,
        )
        .unwrap_or_else(|e| panic!("{kind}: signature rejected: {e}"));
        let body = request.json();
        assert_eq!(body["id"], event.event_id.as_str());
        assert_eq!(body["type"], kind);
        assert_eq!(body["merchant_id"], m1.as_str());
        assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert!(
        received.iter().all(|r| r.event_id != acknowledged.event_id),
        "a terminal acknowledgement produced a webhook"
    );

    let by_id = |id: &str| received.iter().find(|r| r.event_id == id).unwrap().json();
    let data = by_id(&orphan_confirmed.event_id)["data"].clone();
    assert_eq!(data["rrn"], "633000000002");
    assert_eq!(data["stan"], "000002");
    assert_eq!(data["local_date"], "2026-11-24");
    assert_eq!(data["terminal_id"], "TERM0001");
    assert_eq!(data["masked_pan"], "411111******1111");
    assert_eq!(data["amount"]["minor_units"], 1050);
    assert_eq!(data["amount"]["currency"], "EUR");
    assert_eq!(data["approval_code"], "A1B2C3");
    assert_eq!(data["evidence"], "policy");

    let data = by_id(&orphan_reversed.event_id)["data"].clone();
    assert_eq!(data["reason"], "no_terminal_acknowledgement");
    assert_eq!(data["reversal_reference"], "633000000003");
    assert_eq!(data["attempts"], 2);
    assert!(data["funds_released_at"].is_string());

    let data = by_id(&ack_conflict.event_id)["data"].clone();
    assert_eq!(data["reversal_reason"], "no_terminal_acknowledgement");
    let data = by_id(&conflict_in_batch.event_id)["data"].clone();
    assert_eq!(data["outcome"], "conflict_reversed_at_host");
    assert_eq!(
        data["detail"],
        "the host reversed it (no_terminal_acknowledgement)"
    );

    let data = by_id(&paid.event_id)["data"].clone();
    assert_eq!(data["window_id"], "0193a5d4-7e1f-7c3a-9d5e-00000000beef");
    assert_eq!(data["currency"], "EUR");
    assert_eq!(data["transaction_count"], 3);
    assert_eq!(data["gross_minor_units"], 3150);
    assert_eq!(data["fee_minor_units"], 19);
    assert_eq!(data["net_minor_units"], 3131);
    assert_eq!(data["payout_reference"], "PO-000123");
    assert_eq!(data["payout_file"], "pain001-20261124.xml");

    // No full PAN anywhere.
    assert!(
        received
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("4111111111111111"))
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_failing_three_times_gets_it_on_the_fourth_attempt() {
    let server = WebhookServer::start().await;
    server.set("/flaky", Behaviour::FailFirst(3));
    let m1 = merchant("MB");
    let config = NotifierConfig {
        endpoints: vec![endpoint(&m1, server.url("/flaky"))],
        // Gaps of 100, 200 and 400 ms (±20%): each clearly longer than the
        // one before, whatever the jitter.
        retry: RetryConfig {
            initial_delay_ms: 100,
            max_delay_ms: 10_000,
            max_attempts: 6,
        },
        ..NotifierConfig::default()
    };
    let notifier = start(config).await;
    let event = reversed(&m1, "000010");
    notifier.publish(topics::AUTHORIZATION_EVENTS, &event).await;

    let received = server.wait_for("/flaky", 4).await;
    let row = eventually("the delivery recorded as delivered", || async {
        deliveries(notifier.pool())
            .await
            .into_iter()
            .find(|r| r.state == "delivered")
    })
    .await;
    assert_eq!(row.attempts, 4);
    assert_eq!(row.last_error, None);
    assert!(received.iter().all(|r| r.event_id == event.event_id));
    for request in &received {
        verify(
            SECRET,
            &request.signature,
            &request.body,
            now_s(),
            DEFAULT_TOLERANCE_S,
        )
        .unwrap();
    }
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert_eq!(gaps.len(), 3);
    // Never before its backoff (the lower bound of the jitter) ...
    for (gap, base_ms) in gaps.iter().zip([100_u64, 200, 400]) {
        assert!(
            *gap >= Duration::from_millis(base_ms * 8 / 10),
            "gap {gap:?} shorter than 80% of {base_ms} ms ({gaps:?})"
        );
    }
    // ... and growing.
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "gaps do not grow: {gaps:?}"
    );
    // Exactly once after success: a later event is delivered, and this one
    // never came again.
    let sentinel = reversed(&m1, "000011");
    notifier
        .publish(topics::AUTHORIZATION_EVENTS, &sentinel)
        .await;
    let received = server.wait_for("/flaky", 5).await;
    assert_eq!(
        received
            .iter()
            .filter(|r| r.event_id == event.event_id)
            .count(),
        4
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_endpoint_is_dead_lettered_then_redelivered() {
    let server = WebhookServer::start().await;
    server.set("/down", Behaviour::Status(500));
    let config = NotifierConfig {
        retry: RetryConfig {
            initial_delay_ms: 50,
            max_delay_ms: 200,
            max_attempts: 3,
        },
        ..NotifierConfig::default()
    };
    let notifier = start(config).await;
    let mut admin = notifier.admin().await;

    // Endpoints registered through gRPC: URL checked, secret generated.
    let m1 = merchant("MC");
    let bad = admin
        .register_endpoint(RegisterEndpointRequest {
            merchant_id: m1.clone(),
            url: "ftp://127.0.0.1/hooks".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("url:"), "{}", bad.message());
    let bad = admin
        .register_endpoint(RegisterEndpointRequest {
            merchant_id: "not a merchant".into(),
            url: server.url("/down"),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("merchant_id:"),
        "{}",
        bad.message()
    );
    let registered = admin
        .register_endpoint(RegisterEndpointRequest {
            merchant_id: m1.clone(),
            url: server.url("/down"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(registered.secret.starts_with("whsec_"));
    assert_eq!(registered.secret.len(), "whsec_".len() + 64);
    let again = admin
        .register_endpoint(RegisterEndpointRequest {
            merchant_id: m1.clone(),
            url: server.url("/down"),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    // A second merchant whose endpoint refuses connections.
    let m2 = merchant("MD");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    admin
        .register_endpoint(RegisterEndpointRequest {
            merchant_id: m2.clone(),
            url: format!("http://{closed}/refused"),
        })
        .await
        .unwrap();

    let event = reversed(&m1, "000020");
    let other = reversed(&m2, "000021");
    notifier.publish(topics::AUTHORIZATION_EVENTS, &event).await;
    notifier.publish(topics::AUTHORIZATION_EVENTS, &other).await;

    let failed = eventually("both dead-lettered", || {
        let mut admin = admin.clone();
        async move {
            let listed = admin
                .list_failed_deliveries(ListFailedDeliveriesRequest {
                    merchant_id: None,
                    limit: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .deliveries;
            (listed.len() == 2).then_some(listed)
        }
    })
    .await;
    let mine = failed.iter().find(|d| d.merchant_id == m1).unwrap();
    assert_eq!(mine.event_id, event.event_id);
    assert_eq!(mine.event_type, "payment.reversed");
    assert_eq!(mine.url, server.url("/down"));
    assert_eq!(mine.attempts, 3);
    assert_eq!(mine.last_error, "HTTP 500 Internal Server Error");
    assert!(!mine.dead_lettered_at.is_empty());
    let refused = failed.iter().find(|d| d.merchant_id == m2).unwrap();
    assert!(
        refused.last_error.starts_with("connection failed"),
        "{}",
        refused.last_error
    );
    assert_eq!(server.received("/down").len(), 3);
    for request in server.received("/down") {
        verify(
            &registered.secret,
            &request.signature,
            &request.body,
            now_s(),
            300,
        )
        .unwrap();
    }

    // Filtered by merchant.
    let only_m2 = admin
        .list_failed_deliveries(ListFailedDeliveriesRequest {
            merchant_id: Some(m2.clone()),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(only_m2.len(), 1);
    assert_eq!(only_m2[0].event_id, other.event_id);

    // The endpoint comes back; the operator redelivers.
    server.set("/down", Behaviour::Ok);
    let answer = admin
        .redeliver(RedeliverRequest {
            target: Some(redeliver_request::Target::DeliveryId(
                mine.delivery_id.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.redelivered, 1);
    let received = server.wait_for("/down", 4).await;
    assert_eq!(received[3].event_id, event.event_id);
    verify(
        &registered.secret,
        &received[3].signature,
        &received[3].body,
        now_s(),
        300,
    )
    .unwrap();
    let row = eventually("redelivered and recorded", || async {
        deliveries(notifier.pool())
            .await
            .into_iter()
            .find(|r| r.event_id.to_string() == event.event_id && r.state == "delivered")
    })
    .await;
    assert_eq!(row.attempts, 4, "attempts are kept across a redelivery");

    let listed = admin
        .list_failed_deliveries(ListFailedDeliveriesRequest {
            merchant_id: None,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(
        listed.len(),
        1,
        "only the refused one is still dead-lettered"
    );

    // Redelivering what is not dead-lettered, or does not exist, is refused.
    let delivered = admin
        .redeliver(RedeliverRequest {
            target: Some(redeliver_request::Target::DeliveryId(
                mine.delivery_id.clone(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(delivered.code(), tonic::Code::FailedPrecondition);
    let unknown = admin
        .redeliver(RedeliverRequest {
            target: Some(redeliver_request::Target::DeliveryId(
                uuid::Uuid::new_v4().to_string(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let missing = admin
        .redeliver(RedeliverRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);

    // A merchant's redelivery gives a fresh budget of 3: it fails 3 more
    // times and is dead-lettered again with 6 attempts in all.
    let answer = admin
        .redeliver(RedeliverRequest {
            target: Some(redeliver_request::Target::AllForMerchant(m2.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.redelivered, 1);
    eventually("dead-lettered again after a fresh budget", || async {
        deliveries(notifier.pool()).await.into_iter().find(|r| {
            r.event_id.to_string() == other.event_id
                && r.state == "dead_lettered"
                && r.attempts == 6
        })
    })
    .await;
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_published_twice_is_delivered_once() {
    let server = WebhookServer::start().await;
    let m1 = merchant("ME");
    let config = NotifierConfig {
        endpoints: vec![endpoint(&m1, server.url("/once"))],
        ..NotifierConfig::default()
    };
    let notifier = start(config).await;
    let event = reversed(&m1, "000030");
    notifier.publish(topics::AUTHORIZATION_EVENTS, &event).await;
    notifier.publish(topics::AUTHORIZATION_EVENTS, &event).await;
    // A later event on the same partition: once it has arrived, both
    // copies have been consumed.
    let sentinel = reversed(&m1, "000031");
    notifier
        .publish(topics::AUTHORIZATION_EVENTS, &sentinel)
        .await;
    let received = server.wait_for("/once", 2).await;
    eventually("the sentinel delivered", || async {
        let rows = deliveries(notifier.pool()).await;
        rows.iter()
            .any(|r| r.event_id.to_string() == sentinel.event_id && r.state == "delivered")
            .then_some(())
    })
    .await;
    let rows = deliveries(notifier.pool()).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let received_now = server.received("/once");
    assert_eq!(received_now.len(), 2, "{received:?}");
    assert_eq!(
        received_now
            .iter()
            .filter(|r| r.event_id == event.event_id)
            .count(),
        1
    );
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_merchant_does_not_hold_back_another() {
    const SLOW_EVENTS: usize = 6;
    const FAST_EVENTS: usize = 10;
    let server = WebhookServer::start().await;
    server.set("/slow", Behaviour::Slow(Duration::from_secs(2)));
    let slow = merchant("MF");
    let fast = merchant("MG");
    let config = NotifierConfig {
        endpoints: vec![
            endpoint(&slow, server.url("/slow")),
            endpoint(&fast, server.url("/fast")),
        ],
        max_in_flight: 16,
        max_in_flight_per_endpoint: 2,
        ..NotifierConfig::default()
    };
    let notifier = start(config).await;

    // The slow merchant's events come first: a worker that served them in
    // order would make the fast merchant wait 6 s.
    let mut slow_ids = Vec::new();
    for i in 0..SLOW_EVENTS {
        let event = reversed(&slow, &format!("{:06}", 100 + i));
        slow_ids.push(event.event_id.clone());
        notifier.publish(topics::AUTHORIZATION_EVENTS, &event).await;
    }
    server.wait_for("/slow", 1).await;
    let fast_events: Vec<_> = (0..FAST_EVENTS)
        .map(|i| reversed(&fast, &format!("{:06}", 200 + i)))
        .collect();
    futures::future::join_all(
        fast_events
            .iter()
            .map(|event| notifier.publish(topics::AUTHORIZATION_EVENTS, event)),
    )
    .await;

    let fast_received = server.wait_for("/fast", FAST_EVENTS).await;
    // At this moment the slow merchant is still being served: its requests
    // are in flight and most of its deliveries have not even started.
    let (slow_in_flight, slow_peak) = server.in_flight("/slow");
    let slow_received = server.received("/slow");
    let slow_started = slow_received.len();
    let since_first_slow = slow_received[0].at.elapsed();
    assert!(
        slow_in_flight > 0,
        "the slow merchant was already done ({slow_started} started, {since_first_slow:?} \
         after its first request)"
    );
    assert!(
        slow_started < SLOW_EVENTS,
        "all {slow_started} slow deliveries started before the fast ones finished"
    );
    assert!(
        slow_peak <= 2,
        "the slow endpoint had {slow_peak} requests at once"
    );
    assert_eq!(fast_received.len(), FAST_EVENTS);

    // And the slow merchant still gets every webhook, never more than its
    // two slots at once.
    let slow_received = server.wait_for("/slow", SLOW_EVENTS).await;
    let mut got: Vec<_> = slow_received.iter().map(|r| r.event_id.clone()).collect();
    got.sort();
    slow_ids.sort();
    assert_eq!(got, slow_ids);
    assert!(server.in_flight("/slow").1 <= 2);
    eventually("every delivery recorded", || async {
        let rows = deliveries(notifier.pool()).await;
        (rows.len() == SLOW_EVENTS + FAST_EVENTS && rows.iter().all(|r| r.state == "delivered"))
            .then_some(())
    })
    .await;
    notifier.stop().await;
}
