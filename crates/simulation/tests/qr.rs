//! QR payments in the simulated world (issue 15): many seeds under every
//! fault, the paths they must go down, and the fault-free run.

use simulation::qr::{self, QrStats};
use simulation::{Config, Faults, seed_from_env};

/// QR payments simulated here, besides the six in every run of the
/// randomized card test.
const PAYMENTS: u64 = 20_000;

#[test]
fn no_qr_invariant_breaks_under_every_fault() {
    let mut stats = QrStats::default();
    let mut seed = seed_from_env().unwrap_or(0);
    let one = seed_from_env().is_some();
    while stats.payments < PAYMENTS {
        let config = Config {
            qr_payments: 24,
            ..Config::new(seed, Faults::SOUND)
        };
        match qr::run(&config) {
            Ok(run) => stats.add(&run),
            Err(violation) => panic!("{violation}"),
        }
        if one {
            return;
        }
        seed += 1;
    }
    println!("{stats:?}");
    // Every path the faults open was taken, not only the happy one.
    let paths = [
        ("consumer presented", stats.consumer_presented),
        ("merchant presented", stats.merchant_presented),
        ("confirmed by the terminal", stats.confirmed_by_terminal),
        ("S3 orphans confirmed by policy", stats.orphans_confirmed),
        ("S3 orphans refunded", stats.orphans_refunded),
        ("a close or cancel that met a payment", stats.races_refunded),
        ("closed", stats.closed),
        ("failed", stats.failed),
        (
            "a charge found by the switch's query",
            stats.paid_found_by_query,
        ),
        ("notifications applied", stats.notifications_applied),
        (
            "duplicate notifications ignored",
            stats.notifications_ignored,
        ),
        ("query timeouts", stats.query_timeouts),
        ("cancels repeated", stats.cancel_retries),
        ("platform refusals while down", stats.platform_refusals),
        ("switch crashes", stats.switch_crashes),
        (
            "acknowledgements after a refund",
            stats.acknowledgement_conflicts,
        ),
    ];
    for (path, count) in paths {
        assert!(count > 0, "no run went down the path: {path}");
    }
}

#[test]
fn without_faults_every_qr_payment_ends_and_the_ledgers_agree() {
    for seed in 0..200 {
        let config = Config {
            qr_payments: 24,
            ..Config::new(seed, Faults::NONE)
        };
        let stats = qr::run(&config).unwrap_or_else(|violation| panic!("{violation}"));
        assert_eq!(stats.payments, 24);
        assert_eq!(stats.platform_refusals + stats.switch_crashes, 0);
    }
}

#[test]
fn a_qr_seed_replays_step_for_step() {
    let config = Config {
        qr_payments: 24,
        ..Config::new(7, Faults::SOUND)
    };
    assert_eq!(qr::run(&config).unwrap(), qr::run(&config).unwrap());
}
