//! The chaos run on the real stack (issue 13): every service its own
//! `switchd` process, killed and restarted; the broker killed and
//! restarted; the database's connections cut; answers dropped and the
//! issuer timing out and answering late. Every promise of the audit must
//! hold. `make test` runs the small plan; `make chaos` the full one
//! (`CHAOS_PLAN=full`); `CHAOS_SEED` replays a run.

use switch_e2e::chaos::{self, ChaosPlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_shopper_stays_charged_whatever_fails() {
    let plan = ChaosPlan::from_env().expect("a valid chaos plan");
    let report = chaos::run(&plan).await.expect("the chaos run completes");
    println!("{}", report.render());
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).expect("a report"),
        )
        .expect("the report is written");
    }
    let broken = report.broken();
    assert!(
        broken.is_empty(),
        "broken promises (seed {}, logs in {}): {broken:?}\n{}",
        report.seed,
        report.logs,
        report.render()
    );
    // The run did what it says: the faults happened and the load went
    // through them.
    assert_eq!(
        report.faults.len(),
        plan_faults(&plan),
        "every planned fault was injected"
    );
    assert!(
        report.audit.settled_transactions > 0,
        "settlement paid something"
    );
}

fn plan_faults(plan: &ChaosPlan) -> usize {
    (5 * plan.kills_per_service + plan.broker_restarts + 1) as usize
}
