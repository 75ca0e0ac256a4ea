//! The exhaustive model check of the money path (issue 12): no state
//! reachable under the sound faults, or under the faults behind each of
//! the holes now fixed, breaks an invariant; with a fix taken back out, the
//! search finds its hole again.

use simulation::model::{Coverage, Options, Report, SOUND_RUNS, check};
use simulation::{Ablation, I1_FINAL, I7_FUNDS};

fn run(name: &str, options: Options) -> Report {
    let report = check(options);
    println!("{name}: {report}");
    println!("{name}: {:?}", report.coverage);
    if let Some(counterexample) = &report.violation {
        println!("{name}: {counterexample}");
    }
    report
}

#[test]
fn no_reachable_state_breaks_an_invariant_under_the_sound_faults() {
    let mut states = 0;
    let mut millis = 0;
    let mut coverage = Coverage::default();
    for (name, options) in SOUND_RUNS {
        let report = run(name, options);
        if let Some(counterexample) = &report.violation {
            panic!("{name}: {counterexample}");
        }
        // Nothing was left waiting for a deadline beyond the clock's bound,
        // so every quiescent state was checked.
        assert_eq!(report.cut, 0, "{name}: {report}");
        assert!(report.quiescent > 0, "{name}: {report}");
        states += report.states;
        millis += report.elapsed.as_millis();
        coverage.add(&report.coverage);
    }
    println!("sound faults: {states} states in {millis} ms");
    // The searches went down every path the faults open, not only the
    // happy one: otherwise "no counterexample" would say little.
    let c = coverage;
    let paths = [
        ("a sale ended confirmed", c.ended_confirmed),
        ("a sale ended reversed", c.ended_reversed),
        ("a sale ended declined", c.ended_declined),
        ("an issuer timeout", c.issuer_timed_out),
        ("a late answer", c.late_answers),
        ("an acknowledgement conflict", c.acknowledgement_conflicts),
        ("an authorization crash", c.authorization_crashed),
        ("a handler crash", c.handler_crashed),
        ("a reversal answered 25", c.reversals_unmatched),
        ("a terminal retry", c.retried),
        ("a premature timeout", c.premature),
    ];
    for (path, states) in paths {
        assert!(states > 0, "no reachable state shows {path}");
    }
}

/// The search under `options` finds no counterexample and leaves nothing
/// unchecked.
fn finds_nothing(name: &str, options: Options) -> Report {
    let report = run(name, options);
    if let Some(counterexample) = &report.violation {
        panic!("{name}: {counterexample}");
    }
    assert_eq!(report.cut, 0, "{name}: {report}");
    assert!(report.quiescent > 0, "{name}: {report}");
    report
}

/// Hole 1 of issue 12: authorization dies while the issuer call is in
/// flight. Before the fix the record stayed `sent_to_issuer` (the search
/// found it in 14 actions); authorization's recovery sweep now records it
/// as timed out once its call's deadline passed, and the timeout reversal
/// follows.
#[test]
fn hole_1_crash_during_the_issuer_call_is_recovered() {
    let report = finds_nothing("hole 1", Options::HOLE_1);
    assert!(report.coverage.authorization_crashed > 0, "{report}");
}

/// Hole 2: a reversal overtakes its original and is answered "25". Before
/// the fix that ended the reversal and the original's approval left funds
/// held (found in 17 actions); now a "25" ends it only for an attempt sent
/// past the original's deadline.
#[test]
fn hole_2_reversal_overtaking_its_original_is_repeated() {
    let report = finds_nothing("hole 2", Options::HOLE_2);
    assert!(report.coverage.reversals_unmatched > 0, "{report}");
}

/// Hole 3: the issuer approves partially ("10") and holds the funds. Before
/// the fix the switch read "10" as a decline and never released them (found
/// in 12 actions); now such an approval is reversed at once.
#[test]
fn hole_3_partial_approval_is_reversed() {
    let report = finds_nothing("hole 3", Options::HOLE_3);
    assert!(report.coverage.ended_reversed > 0, "{report}");
}

/// The search bites: with a fix taken back out, it finds the hole again.
#[test]
fn without_the_recovery_sweep_hole_1_is_found() {
    let options = Options::HOLE_1.ablated(Ablation {
        no_recovery_sweep: true,
        ..Ablation::NONE
    });
    let report = run("hole 1 without the recovery sweep", options);
    let counterexample = report.violation.expect("hole 1 is found");
    assert_eq!(counterexample.invariant, I1_FINAL, "{counterexample}");
    assert!(
        counterexample.detail.contains("ends sent_to_issuer"),
        "{counterexample}"
    );
    let steps = counterexample.steps.join("\n");
    assert!(steps.contains("AUTHORIZATION CRASHES"), "{counterexample}");
}

#[test]
fn when_the_first_25_ends_a_reversal_hole_2_is_found() {
    let options = Options::HOLE_2.ablated(Ablation {
        reversal_ends_on_first_25: true,
        ..Ablation::NONE
    });
    let report = run("hole 2 ended by the first 25", options);
    let counterexample = report.violation.expect("hole 2 is found");
    assert_eq!(counterexample.invariant, I7_FUNDS, "{counterexample}");
    assert!(
        counterexample
            .detail
            .contains("is reversed but the issuer shows"),
        "{counterexample}"
    );
    // The path shows the overtaking: a "25" before the issuer approves.
    let rrn = counterexample
        .detail
        .split_whitespace()
        .next()
        .expect("the RRN");
    let steps = counterexample.steps.join("\n");
    let answered_25 = steps
        .find(&format!("issuer answers the reversal of {rrn}: 25"))
        .expect("a 25 on the path");
    let approved = steps
        .rfind(&format!("issuer answers {rrn}: Approved"))
        .expect("an approval");
    assert!(answered_25 < approved, "{counterexample}");
}

#[test]
fn when_a_partial_approval_reads_as_a_decline_hole_3_is_found() {
    let options = Options::HOLE_3.ablated(Ablation {
        partial_approval_read_as_decline: true,
        ..Ablation::NONE
    });
    let report = run("hole 3 read as a decline", options);
    let counterexample = report.violation.expect("hole 3 is found");
    assert_eq!(counterexample.invariant, I7_FUNDS, "{counterexample}");
    assert!(
        counterexample
            .detail
            .contains("is declined but the issuer shows"),
        "{counterexample}"
    );
    assert!(
        counterexample
            .steps
            .join("\n")
            .contains("PartiallyApproved"),
        "{counterexample}"
    );
}
