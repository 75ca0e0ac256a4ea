//! `NotifierService`: operators list dead-lettered deliveries and
//! redeliver them, and merchants' endpoints are registered with a secret
//! generated here. The one place notifier errors become `tonic::Status`.

use rand::RngCore;
use sqlx::PgPool;
use switch_platform::config::Secret;
use switch_proto::v1::notifier_service_server::NotifierService;
use switch_proto::v1::{
    FailedDelivery, ListFailedDeliveriesRequest, ListFailedDeliveriesResponse, RedeliverRequest,
    RedeliverResponse, RegisterEndpointRequest, RegisterEndpointResponse, redeliver_request,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::config::validate_url;
use switch_core::SharedClock;
use switch_core::destination::Destinations;

use crate::store::{self, RedeliverError, RedeliverTarget};
use crate::webhook::rfc3339;

/// Deliveries listed when the request names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most deliveries listed at once.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// A new signing secret: `whsec_` and 32 random bytes in hex, from the
/// thread-local CSPRNG (seeded by the operating system).
pub fn generate_secret() -> Secret {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!("whsec_{}", hex::encode(bytes)))
}

pub struct NotifierAdmin {
    pool: PgPool,
    /// What a registered URL may reach.
    destinations: Destinations,
    /// Where redeliveries wake the workers.
    channel: String,
    /// When a redelivery is due: now, on the workers' clock.
    clock: SharedClock,
}

impl NotifierAdmin {
    pub fn new(
        pool: PgPool,
        destinations: Destinations,
        channel: impl Into<String>,
        clock: SharedClock,
    ) -> Self {
        NotifierAdmin {
            pool,
            destinations,
            channel: channel.into(),
            clock,
        }
    }
}

fn merchant_id(field: &str, value: &str) -> Result<String, Status> {
    switch_core::MerchantId::parse(value)
        .map(|id| id.as_str().to_owned())
        .map_err(|e| Status::invalid_argument(format!("{field}: {}", e.reason)))
}

fn internal(error: &sqlx::Error) -> Status {
    tracing::error!(%error, "Notifier database call failed.");
    Status::unavailable("the notifier's database is unavailable")
}

#[tonic::async_trait]
impl NotifierService for NotifierAdmin {
    async fn list_failed_deliveries(
        &self,
        request: Request<ListFailedDeliveriesRequest>,
    ) -> Result<Response<ListFailedDeliveriesResponse>, Status> {
        let request = request.into_inner();
        let merchant = request
            .merchant_id
            .as_deref()
            .map(|m| merchant_id("merchant_id", m))
            .transpose()?;
        let limit = match request.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let failed = store::list_failed(&self.pool, merchant.as_deref(), i64::from(limit))
            .await
            .map_err(|e| internal(&e))?;
        let deliveries = failed
            .into_iter()
            .map(|d| FailedDelivery {
                delivery_id: d.delivery_id.to_string(),
                event_id: d.event_id.to_string(),
                event_type: d.event_type,
                merchant_id: d.merchant_id,
                endpoint_id: d.endpoint_id.to_string(),
                url: d.url,
                attempts: u32::try_from(d.attempts).unwrap_or(0),
                last_error: d.last_error,
                dead_lettered_at: rfc3339(d.dead_lettered_at),
            })
            .collect();
        Ok(Response::new(ListFailedDeliveriesResponse { deliveries }))
    }

    async fn redeliver(
        &self,
        request: Request<RedeliverRequest>,
    ) -> Result<Response<RedeliverResponse>, Status> {
        let target = match request.into_inner().target {
            Some(redeliver_request::Target::DeliveryId(id)) => RedeliverTarget::Delivery(
                Uuid::parse_str(&id)
                    .map_err(|_| Status::invalid_argument("delivery_id: must be a UUID"))?,
            ),
            Some(redeliver_request::Target::AllForMerchant(merchant)) => {
                RedeliverTarget::Merchant(merchant_id("all_for_merchant", &merchant)?)
            }
            Some(redeliver_request::Target::All(true)) => RedeliverTarget::All,
            Some(redeliver_request::Target::All(false)) => {
                return Err(Status::invalid_argument("all: must be true"));
            }
            None => {
                return Err(Status::invalid_argument(
                    "target: one of delivery_id, all_for_merchant or all is required",
                ));
            }
        };
        let redelivered =
            match store::redeliver(&self.pool, &target, &self.channel, self.clock.now()).await {
                Ok(count) => count,
                Err(RedeliverError::NotFound(id)) => {
                    return Err(Status::not_found(format!("delivery_id: no delivery {id}")));
                }
                Err(error @ RedeliverError::NotDeadLettered(..)) => {
                    return Err(Status::failed_precondition(error.to_string()));
                }
                Err(RedeliverError::Database(error)) => return Err(internal(&error)),
            };
        tracing::info!(
            ?target,
            redelivered,
            "Dead-lettered deliveries made due again."
        );
        Ok(Response::new(RedeliverResponse {
            redelivered: u32::try_from(redelivered).unwrap_or(u32::MAX),
        }))
    }

    async fn register_endpoint(
        &self,
        request: Request<RegisterEndpointRequest>,
    ) -> Result<Response<RegisterEndpointResponse>, Status> {
        let request = request.into_inner();
        let merchant = merchant_id("merchant_id", &request.merchant_id)?;
        validate_url(&request.url, self.destinations)
            .map_err(|reason| Status::invalid_argument(format!("url: {reason}")))?;
        let secret = generate_secret();
        let Some(endpoint) = store::register_endpoint(&self.pool, &merchant, &request.url, &secret)
            .await
            .map_err(|e| internal(&e))?
        else {
            return Err(Status::already_exists(format!(
                "url: merchant {merchant} has this endpoint already"
            )));
        };
        tracing::info!(
            endpoint_id = %endpoint.endpoint_id,
            merchant_id = %endpoint.merchant_id,
            url = %endpoint.url,
            "Webhook endpoint registered."
        );
        Ok(Response::new(RegisterEndpointResponse {
            endpoint_id: endpoint.endpoint_id.to_string(),
            merchant_id: endpoint.merchant_id,
            url: endpoint.url,
            secret: secret.expose().to_owned(),
            created_at: rfc3339(endpoint.created_at),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_32_random_bytes_in_hex() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let hex_part = a.expose().strip_prefix("whsec_").unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(format!("{a:?}"), Secret::REDACTED);
    }
}
