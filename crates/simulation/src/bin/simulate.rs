//! Runs the simulation over consecutive seeds for `SIM_SECONDS` of wall time
//! (default 10) under the sound faults, and reports simulated transactions
//! per second. `SIM_SEED` is the first seed (default 0). A violation prints
//! its seed and trace and exits with status 1.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use simulation::{Config, Faults, Stats, run, seed_from_env};

fn main() -> ExitCode {
    let seconds: u64 = std::env::var("SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let budget = Duration::from_secs(seconds);
    let first = seed_from_env().unwrap_or(0);
    let started = Instant::now();
    let mut transactions: u64 = 0;
    let mut steps: u64 = 0;
    let mut runs: u64 = 0;
    let mut seed = first;
    let mut stats = Stats::default();
    while started.elapsed() < budget {
        match run(&Config::new(seed, Faults::SOUND)) {
            Ok(report) => {
                transactions += report.transactions as u64;
                steps += report.steps as u64;
                stats.add(&report.stats);
            }
            Err(violation) => {
                eprintln!("{violation}");
                return ExitCode::FAILURE;
            }
        }
        runs += 1;
        seed += 1;
    }
    let ms = u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    println!(
        "{transactions} simulated transactions in {runs} runs (seeds {first}..{seed}) \
         in {ms} ms: {} transactions per wall second ({steps} steps)",
        transactions.saturating_mul(1_000) / ms
    );
    println!(
        "{} QR payments in the same runs ({} S3 orphans: {} confirmed, {} refunded)",
        stats.qr.payments,
        stats.qr.orphans_confirmed + stats.qr.orphans_refunded,
        stats.qr.orphans_confirmed,
        stats.qr.orphans_refunded
    );
    println!("{stats:?}");
    ExitCode::SUCCESS
}
