//! Benchmark: close one settlement window for 1,000 merchants holding
//! 100,000 confirmed approvals (plus held and reversed ones that the run
//! must look at or skip), and write its payout files.
//!
//! Each round seeds a fresh schema in the real PostgreSQL, then times
//! `Settler::run` alone (selection, eligibility, window and payout rows,
//! 100,000 assignments, events in the outbox, CSV and pain.001). Prints one
//! JSON line per round and a summary line.
//!
//! `cargo bench -p settlement-batcher --bench settlement_run`
//! (`SETTLEMENT_BENCH_TRANSACTIONS`, `SETTLEMENT_BENCH_MERCHANTS`,
//! `SETTLEMENT_BENCH_ROUNDS` override the sizes).

use std::time::Instant;

use settlement_batcher::{MIGRATOR, SERVICE_NAME, SettlementConfig};
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo test --all-targets` runs bench targets too, without `--bench`:
    // there it only has to build.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("settlement_run: benchmark skipped (run it with `cargo bench`)");
        return Ok(());
    }
    let transactions = env_or("SETTLEMENT_BENCH_TRANSACTIONS", 100_000);
    let merchants = env_or("SETTLEMENT_BENCH_MERCHANTS", 1_000);
    let rounds = env_or("SETTLEMENT_BENCH_ROUNDS", 3);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let payout_dir = std::env::temp_dir().join(format!("settlement-bench-{}", std::process::id()));
    let mut elapsed_ms = Vec::new();
    for round in 0..rounds {
        let database = DatabaseConfig {
            url: url.clone(),
            schema_prefix: format!("bench{}_{round}_", std::process::id()),
            ..DatabaseConfig::default()
        };
        let schema = database.schema_for(SERVICE_NAME);
        let pool = switch_platform::db::connect(&database, &schema).await?;
        MIGRATOR.run(&pool).await?;
        seed(&pool, transactions, merchants).await?;
        sqlx::query("ANALYZE transactions").execute(&pool).await?;

        let config = SettlementConfig {
            payout_dir: payout_dir.clone(),
            ..SettlementConfig::default()
        };
        // The producer is never used: the outbox keeps the run's events.
        let settler = settlement_batcher::settler(
            pool.clone(),
            &KafkaConfig::default(),
            &config,
            switch_core::SystemClock::shared(),
        )?;
        let started = Instant::now();
        let report = settler.run(&[], settler.now()).await?;
        let ms = started.elapsed().as_millis();
        elapsed_ms.push(ms);

        let paid: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transactions WHERE window_id IS NOT NULL")
                .fetch_one(&pool)
                .await?;
        println!(
            "{{\"round\":{round},\"transactions\":{transactions},\"merchants\":{merchants},\
             \"windows\":{},\"paid\":{paid},\"elapsed_ms\":{ms}}}",
            report.windows.len()
        );
        assert_eq!(
            report.windows.len() as i64,
            merchants,
            "one window per merchant"
        );
        pool.close().await;
        switch_platform::db::drop_schema(&url, &schema).await?;
    }
    let _ = std::fs::remove_dir_all(&payout_dir);
    elapsed_ms.sort_unstable();
    let median = elapsed_ms[elapsed_ms.len() / 2];
    println!(
        "{{\"benchmark\":\"settlement_run\",\"transactions\":{transactions},\"merchants\":{merchants},\
         \"median_ms\":{median},\"min_ms\":{},\"max_ms\":{}}}",
        elapsed_ms[0],
        elapsed_ms[elapsed_ms.len() - 1]
    );
    Ok(())
}

/// `transactions` confirmed approvals spread over `merchants`, plus one
/// unconfirmed (held) and one reversed approval per ten, approved an hour
/// before the cut-off.
async fn seed(pool: &sqlx::PgPool, transactions: i64, merchants: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, local_date, \
            rrn, masked_pan, amount_minor, currency, approval_code, approved_at, status, \
            reversal_reason) \
         SELECT gen_random_uuid(), \
                'T' || lpad((i % ($2 * 2))::text, 7, '0'), \
                'M' || lpad((i % $2)::text, 14, '0'), \
                lpad((i % 1000000)::text, 6, '0'), \
                current_date - (i / 1000000)::int, \
                lpad(i::text, 12, '0'), \
                '411111******1111', \
                100 + (i * 7919) % 100000, \
                'EUR', 'A00001', now() - interval '1 hour', \
                CASE WHEN i % 10 = 0 AND i >= $1 THEN 'unconfirmed' \
                     WHEN i % 10 = 1 AND i >= $1 THEN 'reversed' \
                     ELSE 'confirmed' END, \
                CASE WHEN i % 10 = 1 AND i >= $1 THEN 'no_terminal_acknowledgement' END \
         FROM generate_series(0, $1 + $1 / 5 - 1) AS i \
         WHERE i < $1 OR i % 10 IN (0, 1)",
    )
    .bind(transactions)
    .bind(merchants)
    .execute(pool)
    .await?;
    Ok(())
}
