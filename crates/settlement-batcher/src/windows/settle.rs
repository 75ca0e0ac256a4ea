//! The settle step of a run: the payout files (CSV and pain.001) rendered
//! from the run's stored windows and payouts and written atomically, then
//! the windows marked `settled` with one `settlement.merchant_paid` event
//! per payout. Everything a file says comes from the record (the run id,
//! the cut-off, the time the windows closed), so a run finished by a later
//! tick after a crash writes the same bytes.

use std::path::{Path, PathBuf};

use sqlx::FromRow;
use switch_core::{Currency, PayoutAccount, PayoutInstruction, PayoutRun};
use switch_platform::outbox;
use switch_platform::timestamps::from_time;
use switch_proto::v1::{self as pb, WindowSummary, event_envelope::Payload};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{RunReport, SettleError, Settler, wire_payout};
use crate::config::SettlementConfig;
use crate::events::outbox_message;
use crate::store::CorruptRow;

#[derive(Debug, FromRow)]
struct StoredPayout {
    window_id: Uuid,
    merchant_id: String,
    sequence: i64,
    cutoff_at: OffsetDateTime,
    closed_at: OffsetDateTime,
    fee_basis_points: i32,
    qr_fee_basis_points: Option<i32>,
    held_count: i64,
    currency: Option<String>,
    transaction_count: Option<i64>,
    gross_minor_units: Option<i64>,
    fee_minor_units: Option<i64>,
    net_minor_units: Option<i64>,
    refund_count: Option<i64>,
    refund_minor_units: Option<i64>,
    reference: Option<String>,
}

/// One payout of a run: merchant, window, amounts, end-to-end reference.
pub(crate) struct RunPayout {
    pub merchant_id: String,
    pub window_id: Uuid,
    pub payout: switch_core::Payout,
    pub reference: String,
}

/// A run's payout files, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PayoutFiles {
    /// The file name without extension: cut-off and run id.
    pub stem: String,
    pub csv: String,
    pub pain001: String,
}

/// Renders a run's payout files from what the run recorded: `run_id` is
/// the pain.001 message id and names the files with `cutoff`; `closed_at`
/// (when the run closed its windows) is the file's creation time.
pub(crate) fn render_payout_files(
    config: &SettlementConfig,
    run_id: Uuid,
    cutoff: OffsetDateTime,
    closed_at: OffsetDateTime,
    payouts: &[RunPayout],
) -> PayoutFiles {
    let window_ids: Vec<String> = payouts.iter().map(|p| p.window_id.to_string()).collect();
    let terms: Vec<_> = payouts
        .iter()
        .map(|p| config.terms_for(&p.merchant_id))
        .collect();
    let instructions: Vec<PayoutInstruction<'_>> = payouts
        .iter()
        .zip(&terms)
        .zip(&window_ids)
        .map(|((p, terms), window_id)| PayoutInstruction {
            end_to_end_id: &p.reference,
            merchant_id: &p.merchant_id,
            merchant_name: &terms.name,
            account: match &terms.iban {
                Some(iban) => PayoutAccount::Iban(iban),
                None => PayoutAccount::MerchantAccount(&p.merchant_id),
            },
            window_id,
            payout: &p.payout,
        })
        .collect();
    let message_id = run_id.simple().to_string();
    let run = PayoutRun {
        message_id: &message_id,
        created_at: closed_at,
        execution_date: cutoff.date() + Duration::DAY,
        debtor_name: &config.debtor_name,
        debtor_iban: &config.debtor_iban,
        debtor_bic: &config.debtor_bic,
    };
    PayoutFiles {
        stem: format!(
            "payouts-{}-{}",
            cutoff
                .format(format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default(),
            run_id.simple()
        ),
        csv: switch_core::render_csv(&instructions),
        pain001: switch_core::render_pain001(&run, &instructions),
    }
}

impl Settler {
    /// Writes the run's payout files and marks its windows settled.
    pub(super) async fn settle_run(&self, run_id: Uuid) -> Result<RunReport, SettleError> {
        let rows: Vec<StoredPayout> = sqlx::query_as(
            "SELECT w.window_id, w.merchant_id, w.sequence, w.cutoff_at, w.closed_at, \
                    w.fee_basis_points, w.qr_fee_basis_points, w.held_count, p.currency, \
                    p.transaction_count, p.gross_minor_units, p.fee_minor_units, \
                    p.net_minor_units, p.refund_count, p.refund_minor_units, p.reference \
             FROM windows w LEFT JOIN payouts p ON p.window_id = w.window_id \
             WHERE w.run_id = $1 ORDER BY w.merchant_id, p.currency",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(RunReport::default());
        };
        let (cutoff, closed_at) = (first.cutoff_at, first.closed_at);

        let mut summaries: Vec<WindowSummary> = Vec::new();
        let mut payouts: Vec<RunPayout> = Vec::new();
        for row in &rows {
            if summaries
                .last()
                .is_none_or(|s| s.window_id != row.window_id.to_string())
            {
                summaries.push(WindowSummary {
                    window_id: row.window_id.to_string(),
                    merchant_id: row.merchant_id.clone(),
                    sequence: u64::try_from(row.sequence).unwrap_or(0),
                    cutoff: cutoff.format(&Rfc3339).unwrap_or_default(),
                    payouts: Vec::new(),
                    held_count: row.held_count,
                    fee_basis_points: u32::try_from(row.fee_basis_points).unwrap_or(0),
                    qr_fee_basis_points: row
                        .qr_fee_basis_points
                        .and_then(|bp| u32::try_from(bp).ok())
                        .unwrap_or(0),
                });
            }
            let (Some(currency), Some(count), Some(gross), Some(fee), Some(net), Some(reference)) = (
                &row.currency,
                row.transaction_count,
                row.gross_minor_units,
                row.fee_minor_units,
                row.net_minor_units,
                &row.reference,
            ) else {
                continue;
            };
            let currency = Currency::parse(currency).map_err(|e| CorruptRow {
                transaction_id: row.window_id,
                reason: e.to_string(),
            })?;
            let payout = switch_core::Payout {
                currency,
                transaction_count: u64::try_from(count).unwrap_or(0),
                gross_minor_units: gross,
                fee_minor_units: fee,
                net_minor_units: net,
                refund_count: row
                    .refund_count
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(0),
                refund_minor_units: row.refund_minor_units.unwrap_or(0),
            };
            if let Some(summary) = summaries.last_mut() {
                summary.payouts.push(wire_payout(&payout, reference));
            }
            payouts.push(RunPayout {
                merchant_id: row.merchant_id.clone(),
                window_id: row.window_id,
                payout,
                reference: reference.clone(),
            });
        }

        let (csv_path, pain001_path) = if payouts.is_empty() {
            (None, None)
        } else {
            let files = render_payout_files(&self.config, run_id, cutoff, closed_at, &payouts);
            let (csv, pain) = self.write_files(&files).await?;
            (Some(csv), Some(pain))
        };
        let file_name = pain001_path
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let settled = sqlx::query(
            "UPDATE windows SET state = 'settled', settled_at = $3, payout_file = $2 \
             WHERE run_id = $1 AND state = 'closed'",
        )
        .bind(run_id)
        .bind(&file_name)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if settled > 0 {
            for p in &payouts {
                if p.payout.net_minor_units <= 0 {
                    continue;
                }
                let payload = Payload::MerchantPaid(pb::MerchantPaid {
                    merchant_id: p.merchant_id.clone(),
                    window_id: p.window_id.to_string(),
                    payout: Some(wire_payout(&p.payout, &p.reference)),
                    paid_at: Some(from_time(now)),
                    payout_file: file_name.clone(),
                });
                let message = outbox_message(
                    &self.topic,
                    &p.merchant_id,
                    "",
                    "settlement.merchant_paid",
                    payload,
                    now,
                );
                outbox::enqueue(&mut tx, &message).await?;
                self.metrics
                    .paid(p.payout.currency.code(), p.payout.net_minor_units);
            }
        }
        tx.commit().await?;
        Ok(RunReport {
            run_id: Some(run_id),
            windows: summaries,
            csv_path,
            pain001_path,
        })
    }

    async fn write_files(&self, files: &PayoutFiles) -> Result<(PathBuf, PathBuf), SettleError> {
        let dir = &self.config.payout_dir;
        tokio::fs::create_dir_all(dir).await?;
        let csv_path = dir.join(format!("{}.csv", files.stem));
        let pain_path = dir.join(format!("{}.pain001.xml", files.stem));
        write_atomically(&csv_path, files.csv.as_bytes()).await?;
        write_atomically(&pain_path, files.pain001.as_bytes()).await?;
        Ok((csv_path, pain_path))
    }
}

/// Written to a temporary name and renamed, so a reader never sees half a
/// payout file. The temporary name is the writer's own: two writers of the
/// same run (a retry racing the first attempt) write identical bytes, and
/// with a shared name one renamed the other's file away from under it.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.partial", Uuid::new_v4().simple()));
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, path).await
}
