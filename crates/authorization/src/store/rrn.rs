//! RRN allocation: sequence numbers handed out from blocks of 1000
//! reserved in the database, so RRNs stay unique across processes without a
//! round trip per authorization.

use sqlx::PgPool;
use switch_core::Rrn;
use time::Date;
use tokio::sync::Mutex;

use crate::error::AuthorizationError;

#[derive(Default)]
pub(super) struct RrnAllocator {
    block: Mutex<(u64, u64)>,
}

impl RrnAllocator {
    const BLOCK: u64 = 1_000;

    /// The next RRN, dated `today` (the switch's clock).
    pub(super) async fn next(&self, pool: &PgPool, today: Date) -> Result<Rrn, AuthorizationError> {
        let mut block = self.block.lock().await;
        if block.0 == block.1 {
            let reserved: i64 = sqlx::query_scalar("SELECT nextval('rrn_blocks')")
                .fetch_one(pool)
                .await?;
            let start = u64::try_from(reserved).unwrap_or(0) * Self::BLOCK;
            *block = (start, start + Self::BLOCK);
        }
        let sequence = block.0;
        block.0 += 1;
        Ok(Rrn::from_parts(today, sequence))
    }
}
