//! When a merchant's window is due: the latest cut-off at or before the
//! caller's `now` that the merchant's last window has not closed at
//! (`switch_core::due_cutoff`). The query only finds merchants with an open
//! window and their last cut-off; it compares no time itself.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::{SettleError, Settler};

impl Settler {
    /// Merchants whose cut-off passed since their last window, each with
    /// the cut-off instant that is due, as of `now`.
    pub async fn due(
        &self,
        now: OffsetDateTime,
    ) -> Result<BTreeMap<OffsetDateTime, Vec<String>>, SettleError> {
        // `status <> 'reversed'` matches the index `transactions_unsettled`:
        // a reversed approval is never paid (`eligibility`), so it opens no
        // window.
        let rows: Vec<(String, Option<OffsetDateTime>)> = sqlx::query_as(
            "SELECT m.merchant_id, (SELECT max(cutoff_at) FROM windows w WHERE w.merchant_id = m.merchant_id) \
             FROM (SELECT DISTINCT merchant_id FROM transactions \
                   WHERE window_id IS NULL AND status <> 'reversed') m",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut due: BTreeMap<OffsetDateTime, Vec<String>> = BTreeMap::new();
        for (merchant_id, last_cutoff) in rows {
            let terms = self.config.terms_for(&merchant_id);
            if let Some(cutoff) = switch_core::due_cutoff(now, terms.cutoff, last_cutoff) {
                due.entry(cutoff).or_default().push(merchant_id);
            }
        }
        Ok(due)
    }
}
