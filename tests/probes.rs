//! The readiness probe behind mutual TLS (issue 16, parts 3–4): the
//! kubelet's own gRPC probe cannot present a client certificate, so the
//! chart runs `switchd admin health` in the pod. Against authorization
//! with internal TLS on (a dev service PKI), it says SERVING while the
//! service is up, and NOT_SERVING from the moment SIGTERM arrives, while
//! the service still serves through its unready delay.

use std::time::{Duration, Instant};

use switch_e2e::{SwitchdProcess, free_address, switchd_binary, switchd_env, unique_suffix};

/// `switchd admin health --service authorization` with `env`: its exit
/// status and what it printed.
fn probe(env: &[(String, String)]) -> (bool, String) {
    let output = std::process::Command::new(switchd_binary())
        .args(["admin", "health", "--service", "authorization"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("SWITCH__TELEMETRY__LOG_LEVEL", "warn")
        .output()
        .expect("switchd runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reaches_a_service_over_mutual_tls_and_sees_it_go_unready_on_sigterm() {
    let prefix = unique_suffix();
    let dir = std::env::temp_dir().join(format!("probes-{prefix}"));
    let pki = dev_certs::DevPki::generate_service_ca().expect("a service CA");
    pki.write_service_layout(&dir, &[authorization::SERVICE_NAME], &[])
        .expect("the service layout");
    let listen = free_address().await;
    let path = |p: std::path::PathBuf| p.display().to_string();
    let env = switchd_env(
        &prefix,
        &[
            (
                "SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB",
                "false".to_owned(),
            ),
            (
                "SWITCH__INTERNAL_TLS__CA_PATH",
                path(dir.join("service-ca.pem")),
            ),
            (
                "SWITCH__INTERNAL_TLS__CERT_PATH",
                path(dir.join("services").join("{service}.pem")),
            ),
            (
                "SWITCH__INTERNAL_TLS__KEY_PATH",
                path(dir.join("services").join("{service}.key")),
            ),
            ("SWITCH__AUTHORIZATION__LISTEN", listen.to_string()),
            // Never called here; internal TLS wants an https:// URL.
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                "https://127.0.0.1:9".to_owned(),
            ),
            ("SWITCH__SHUTDOWN__UNREADY_DELAY_MS", "3000".to_owned()),
        ],
    );
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (serving, said) = probe(&env);
        if serving {
            assert!(said.contains("SERVING"), "{said}");
            break;
        }
        assert!(authorization.exited().is_none(), "authorization stopped");
        assert!(Instant::now() < deadline, "never SERVING: {said}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    authorization.send_sigterm();
    let signalled = Instant::now();
    let said = loop {
        let (serving, said) = probe(&env);
        if !serving {
            break said;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "still SERVING after the unready delay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(said.contains("NOT_SERVING"), "the probe names it: {said}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "NOT_SERVING was seen only after the unready delay"
    );
    let exit = authorization
        .exit_within(Duration::from_secs(30))
        .await
        .expect("authorization exits");
    assert!(exit.success(), "{exit}");

    // The gateway's port takes terminal certificates: not this probe's.
    let (ok, said) = {
        let output = std::process::Command::new(switchd_binary())
            .args(["admin", "health", "--service", "terminal-gateway"])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("switchd runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(
        !ok && said.contains("not served over internal gRPC"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let database = switch_platform::db::DatabaseConfig {
        url: switch_e2e::database_url(),
        schema_prefix: format!("{prefix}_"),
        ..Default::default()
    };
    let _ = switch_platform::db::drop_schema(
        &database.url,
        &database.schema_for(authorization::SERVICE_NAME),
    )
    .await;
}
