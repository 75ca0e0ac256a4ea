//! The signal every service stops on. `serve` functions take a shutdown
//! future instead of listening for signals themselves, so tests can stop a
//! service without signals and `switchd all` can stop every service at once.

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("Shutdown signal received; draining.");
}

/// `[shutdown]`: how a service stops once told to (SIGTERM). It first says
/// NOT_SERVING on health and keeps serving for `unready_delay_ms`, so load
/// balancers and Kubernetes endpoints stop sending it new requests before
/// it stops accepting them; then it stops accepting and gives requests in
/// flight `grace_period_ms` to finish (consumers finish the batch they
/// hold and commit it), answering what is left UNAVAILABLE. Kubernetes'
/// `terminationGracePeriodSeconds` must cover both, with room to spare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub unready_delay_ms: u64,
    pub grace_period_ms: u64,
}

/// The longest `grace_period_ms` or `unready_delay_ms` accepted: past
/// Kubernetes' own default of 30 s for both, a stop this slow is a typo.
pub const MAX_SHUTDOWN_STEP_MS: u64 = 120_000;

impl Default for ShutdownConfig {
    fn default() -> Self {
        let timing = DrainTiming::default();
        ShutdownConfig {
            unready_delay_ms: u64::try_from(timing.unready_delay.as_millis()).unwrap_or(0),
            grace_period_ms: u64::try_from(timing.grace_period.as_millis()).unwrap_or(0),
        }
    }
}

impl ShutdownConfig {
    /// A grace period of zero would answer every request in flight
    /// UNAVAILABLE; either step past [`MAX_SHUTDOWN_STEP_MS`] is refused.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.grace_period_ms == 0 || self.grace_period_ms > MAX_SHUTDOWN_STEP_MS {
            return Err(crate::config::ConfigError::invalid(
                "shutdown.grace_period_ms",
                format!("must be 1 to {MAX_SHUTDOWN_STEP_MS} ms"),
            ));
        }
        if self.unready_delay_ms > MAX_SHUTDOWN_STEP_MS {
            return Err(crate::config::ConfigError::invalid(
                "shutdown.unready_delay_ms",
                format!("must be at most {MAX_SHUTDOWN_STEP_MS} ms"),
            ));
        }
        Ok(())
    }

    pub fn timing(&self) -> DrainTiming {
        DrainTiming {
            unready_delay: std::time::Duration::from_millis(self.unready_delay_ms),
            grace_period: std::time::Duration::from_millis(self.grace_period_ms),
        }
    }
}

/// The two steps of a drain ([`ShutdownConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTiming {
    /// NOT_SERVING but still serving, before the server stops accepting.
    pub unready_delay: std::time::Duration,
    /// Then, how long requests in flight have to finish.
    pub grace_period: std::time::Duration,
}

impl Default for DrainTiming {
    /// No unready delay (a laptop has no load balancer to tell), 15 s of
    /// grace (above the issuer timeout requests in flight may wait for).
    fn default() -> Self {
        DrainTiming {
            unready_delay: std::time::Duration::ZERO,
            grace_period: std::time::Duration::from_secs(15),
        }
    }
}

/// What a service's `serve` is stopped by: the signal (a future that
/// resolves when it should stop) and how it drains. Any such future
/// converts into one with the default [`DrainTiming`].
pub struct Shutdown {
    pub signal: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
    pub timing: DrainTiming,
}

impl Shutdown {
    pub fn new(signal: impl Future<Output = ()> + Send + 'static, timing: DrainTiming) -> Self {
        Shutdown {
            signal: Box::pin(signal),
            timing,
        }
    }
}

impl<F: Future<Output = ()> + Send + 'static> From<F> for Shutdown {
    fn from(signal: F) -> Self {
        Shutdown::new(signal, DrainTiming::default())
    }
}
