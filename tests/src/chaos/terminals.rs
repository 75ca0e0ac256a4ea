//! The terminals of a chaos run: each sells one sale at a time, as a real
//! POS does, and behaves as a real one when an answer does not arrive: it
//! sends an automatic reversal and repeats it until the switch answers.
//! The run's response drops are played here: a dropped answer is one the
//! terminal never saw, so it either reverses or (a share of them) goes
//! silent, leaving the switch to find the orphan.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switch_proto::v1::terminal_service_client::TerminalServiceClient;
use switch_proto::v1::{AcknowledgeRequest, Money, SaleRequest, TerminalReverseRequest};
use tonic::transport::Channel;

use crate::{VISA, today};

/// What the terminals do, in thousandths.
#[derive(Debug, Clone, Copy)]
pub struct TerminalBehaviour {
    /// Answers dropped before the terminal.
    pub drop_per_mille: u32,
    /// Of the dropped ones, the share after which the terminal goes silent
    /// instead of reversing.
    pub silent_per_mille: u32,
    /// How long a terminal waits for the answer of a sale.
    pub sale_timeout: Duration,
    /// How long it keeps repeating a reversal or a completion advice the
    /// switch does not answer, before it gives up (the switch's own orphan
    /// detection then has the last word).
    pub give_up_after: Duration,
}

/// What one sale looked like from the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TerminalView {
    /// Approved, shown, and the completion advice was answered.
    ApprovedAndCompleted,
    /// Approved and shown, but the completion advice was never answered.
    ApprovedCompletionLost,
    /// Approved and shown; the switch answered the completion advice with a
    /// conflict: it had already reversed the payment (S2), so the receipt
    /// is void and the terminal is told so.
    ApprovedButSwitchReversed,
    Declined,
    /// The answer was dropped; the terminal reversed.
    DroppedReversed,
    /// The answer was dropped; the terminal said nothing more.
    DroppedSilent,
    /// No answer (error or timeout); the terminal reversed.
    NoAnswerReversed,
    /// The terminal's reversal was never answered.
    ReversalLost,
    /// The switch refused the sale with a precise error (not transient).
    Refused,
}

/// Counters the chaos controller reads while the terminals run.
#[derive(Debug, Default)]
pub struct Progress {
    pub completed: AtomicU64,
}

/// One terminal's run: `sales` sales with STANs 1..=sales.
pub async fn run_terminal(
    mut client: TerminalServiceClient<Channel>,
    terminal_id: String,
    sales: u32,
    behaviour: TerminalBehaviour,
    seed: u64,
    progress: Arc<Progress>,
) -> Vec<TerminalView> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut views = Vec::with_capacity(sales as usize);
    let local_date = today();
    for number in 1..=sales {
        let stan = format!("{number:06}");
        let request = SaleRequest {
            terminal_id: terminal_id.clone(),
            stan: stan.clone(),
            local_date: local_date.clone(),
            pan: VISA.to_owned(),
            expiry: "2812".to_owned(),
            amount: Some(Money {
                minor_units: rng.random_range(100..100_000),
                currency: "EUR".to_owned(),
            }),
            last_completed_stan: String::new(),
            channel: String::new(),
        };
        let dropped = rng.random_range(0..1000) < behaviour.drop_per_mille;
        let silent = rng.random_range(0..1000) < behaviour.silent_per_mille;
        let mut call = tonic::Request::new(request);
        call.set_timeout(behaviour.sale_timeout);
        let answer = client.sale(call).await;
        let view = match answer {
            Ok(_) if dropped && silent => TerminalView::DroppedSilent,
            Ok(_) if dropped => reverse(&mut client, &terminal_id, &stan, &local_date, behaviour)
                .await
                .unwrap_or(TerminalView::DroppedReversed),
            Ok(response) => {
                let approved = response
                    .get_ref()
                    .authorization
                    .as_ref()
                    .is_some_and(|record| record.response_code == "00");
                if approved {
                    complete(&mut client, &terminal_id, &stan, &local_date, behaviour).await
                } else {
                    TerminalView::Declined
                }
            }
            Err(status) if is_transient(status.code()) => {
                reverse(&mut client, &terminal_id, &stan, &local_date, behaviour)
                    .await
                    .unwrap_or(TerminalView::NoAnswerReversed)
            }
            Err(status) => {
                eprintln!("chaos: {terminal_id} {stan} refused: {status}");
                TerminalView::Refused
            }
        };
        views.push(view);
        progress.completed.fetch_add(1, Ordering::Relaxed);
    }
    views
}

/// The terminal's automatic reversal, repeated until answered: `None`
/// when answered, else [`TerminalView::ReversalLost`].
async fn reverse(
    client: &mut TerminalServiceClient<Channel>,
    terminal_id: &str,
    stan: &str,
    local_date: &str,
    behaviour: TerminalBehaviour,
) -> Option<TerminalView> {
    let give_up = Instant::now() + behaviour.give_up_after;
    loop {
        let mut call = tonic::Request::new(TerminalReverseRequest {
            terminal_id: terminal_id.to_owned(),
            stan: stan.to_owned(),
            local_date: local_date.to_owned(),
        });
        call.set_timeout(behaviour.sale_timeout);
        match client.reverse(call).await {
            Ok(_) => return None,
            Err(status) if is_transient(status.code()) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => {
                eprintln!("chaos: {terminal_id} {stan} reversal not answered: {status}");
                return Some(TerminalView::ReversalLost);
            }
        }
    }
}

/// The completion advice (the terminal showed the approval), repeated
/// until answered.
async fn complete(
    client: &mut TerminalServiceClient<Channel>,
    terminal_id: &str,
    stan: &str,
    local_date: &str,
    behaviour: TerminalBehaviour,
) -> TerminalView {
    let give_up = Instant::now() + behaviour.give_up_after;
    loop {
        let mut call = tonic::Request::new(AcknowledgeRequest {
            terminal_id: terminal_id.to_owned(),
            stan: stan.to_owned(),
            local_date: local_date.to_owned(),
        });
        call.set_timeout(behaviour.sale_timeout);
        match client.acknowledge(call).await {
            Ok(response) => {
                let reversed = response
                    .get_ref()
                    .authorization
                    .as_ref()
                    .is_some_and(|record| record.conflict);
                return if reversed {
                    TerminalView::ApprovedButSwitchReversed
                } else {
                    TerminalView::ApprovedAndCompleted
                };
            }
            Err(status) if is_transient(status.code()) && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return TerminalView::ApprovedCompletionLost,
        }
    }
}

/// Errors that are no answer to a terminal: the switch (or the network to
/// it) is down, slow or failing, not refusing the request. A terminal
/// reverses a sale it got no answer to, and repeats a reversal or a
/// completion advice until it is answered.
fn is_transient(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::AlreadyExists
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
            | tonic::Code::Unimplemented
    )
}
