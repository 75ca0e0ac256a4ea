//! The exhaustive model check of the money path (issue 12): no state
//! reachable under the sound faults breaks an invariant, and each hole's
//! option finds a counterexample until the hole is fixed.

use simulation::model::{Coverage, Options, Report, SOUND_RUNS, check};
use simulation::{I1_FINAL, I7_FUNDS};

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

/// Hole 1 of issue 12: authorization dies while the issuer call is in
/// flight; the record stays `sent_to_issuer` and nothing resolves it.
/// When the hole is fixed, flip this test: the same option must find nothing.
#[test]
fn hole_1_crash_during_the_issuer_call_is_found() {
    let report = run("hole 1", Options::HOLE_1);
    let counterexample = report.violation.expect("hole 1 is found");
    assert_eq!(counterexample.invariant, I1_FINAL, "{counterexample}");
    assert!(
        counterexample.detail.contains("ends sent_to_issuer"),
        "{counterexample}"
    );
    let steps = counterexample.steps.join("\n");
    assert!(steps.contains("AUTHORIZATION CRASHES"), "{counterexample}");
}

/// Hole 2: a reversal overtakes its original, is answered "25" and counted
/// as done; the original's approval then leaves funds held. When the hole
/// is fixed, flip this test.
#[test]
fn hole_2_reversal_overtaking_its_original_is_found() {
    let report = run("hole 2", Options::HOLE_2);
    let counterexample = report.violation.expect("hole 2 is found");
    assert_eq!(counterexample.invariant, I7_FUNDS, "{counterexample}");
    assert!(
        counterexample
            .detail
            .contains("is reversed but the issuer shows"),
        "{counterexample}"
    );
    assert!(counterexample.detail.contains("Held"), "{counterexample}");
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

/// Hole 3: the issuer approves partially ("10") and holds the funds; the
/// switch reads "10" as a decline and never releases them. When the hole is
/// fixed, flip this test.
#[test]
fn hole_3_partial_approval_is_found() {
    let report = run("hole 3", Options::HOLE_3);
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
