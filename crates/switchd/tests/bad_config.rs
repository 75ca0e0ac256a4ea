//! `switchd` refuses a bad configuration value before starting anything:
//! it exits with status 2 and a message naming the key, for each service
//! whose section is bad, and only where that service runs.

use std::process::Command;

fn switchd(service: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchd"))
        .arg(service)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("switchd runs")
}

#[test]
fn a_bad_value_exits_with_status_2_naming_the_key() {
    let cases = [
        (
            "authorization",
            "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS",
            "0",
            "authorization.issuer_timeout_ms",
        ),
        (
            // The call's deadline may not come before the switch stops
            // waiting: every rule of ADR 14 is stated against it.
            "authorization",
            "SWITCH__AUTHORIZATION__ISSUER_LATE_WINDOW_MS",
            "500",
            "authorization.issuer_late_window_ms",
        ),
        (
            "authorization",
            "SWITCH__AUTHORIZATION__RECOVERY_INTERVAL_MS",
            "0",
            "authorization.recovery_interval_ms",
        ),
        (
            "gateway",
            "SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT",
            "not a url",
            // The default certificate files are checked first and missing
            // here: the key named is the first bad one.
            "gateway.tls.",
        ),
        (
            "reversal-handler",
            "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
            "not a url",
            "reversal_handler.authorization_endpoint",
        ),
        (
            "settlement",
            "SWITCH__SETTLEMENT__CUTOFF",
            "25:99",
            "settlement.cutoff",
        ),
        (
            "notifier",
            "SWITCH__NOTIFIER__CONSUMER_GROUP",
            " ",
            "notifier.consumer_group",
        ),
        (
            // Mutual TLS is the default: a missing service certificate
            // stops the service, naming the key (ADR 27).
            "issuer-simulator",
            "SWITCH__INTERNAL_TLS__CA_PATH",
            "/nonexistent/service-ca.pem",
            "internal_tls.ca_path",
        ),
        (
            "authorization",
            "SWITCH__TELEMETRY__LOG_LEVEL",
            "[",
            "telemetry.log_level",
        ),
    ];
    for (service, variable, value, key) in cases {
        let output = switchd(service, &[(variable, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{service}: {stderr}");
        assert!(stderr.contains(key), "{service}: {stderr}");
    }
}

#[test]
fn a_section_is_checked_only_where_its_service_runs_and_sigterm_drains() {
    use std::io::BufRead as _;
    // The issuer simulator reads no authorization setting: a bad one does
    // not stop it from starting.
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchd"))
        .arg("issuer-simulator")
        .env_clear()
        .env("SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS", "0")
        .env("SWITCH__ISSUER_SIMULATOR__LISTEN", "127.0.0.1:0")
        // No service PKI here: the lab mode, named (ADR 27).
        .env("SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB", "true")
        .env("SWITCH__TELEMETRY__LOG_LEVEL", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("switchd runs");
    let stdout = child.stdout.take().expect("piped stdout");
    // Kept open to the end, so the drain's log lines have a reader.
    let mut lines = std::io::BufReader::new(stdout).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("Serving gRPC."));
    assert!(
        serving,
        "the simulator never served: {:?}",
        child.wait_with_output()
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let output = child.wait_with_output().expect("switchd exits");
    assert!(output.status.success(), "{output:?}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|line| line.contains("Draining gRPC requests.")),
        "SIGTERM drains"
    );

    // `all` runs authorization, so there the same value is refused.
    let output = switchd("all", &[("SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS", "0")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("authorization.issuer_timeout_ms"),
        "{stderr}"
    );
}

#[test]
fn production_exits_with_status_2_naming_every_development_setting_it_finds() {
    let output = switchd("authorization", &[("SWITCH__ENVIRONMENT", "production")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for key in [
        "database.url",
        "database.password",
        "authorization.pan_hash_key",
        "authorization.issuer_endpoint",
    ] {
        assert!(stderr.contains(&format!("`{key}`")), "{key}: {stderr}");
    }
    // The key's value never reaches the message.
    assert!(!stderr.contains("dev-only-pan-fingerprint-key"), "{stderr}");

    let output = switchd("issuer-simulator", &[("SWITCH__ENVIRONMENT", "production")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`issuer_simulator`"), "{stderr}");

    let output = switchd("authorization", &[("SWITCH__ENVIRONMENT", "staging")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("environment"), "{stderr}");
}

#[test]
fn a_production_secret_read_from_a_file_lets_the_check_pass_that_key() {
    let dir = std::env::temp_dir().join(format!("switchd-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("pan_hash_key");
    std::fs::write(&key, "an-acquirers-own-fingerprint-key\n").unwrap();
    let key = key.display().to_string();
    let output = switchd(
        "authorization",
        &[
            ("SWITCH__ENVIRONMENT", "production"),
            ("SWITCH__AUTHORIZATION__PAN_HASH_KEY__FILE", key.as_str()),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("`authorization.pan_hash_key`"), "{stderr}");
    assert!(stderr.contains("`database.password`"), "{stderr}");
}

/// `switchd all` on a laptop runs QR against its simulator: the effective
/// configuration shows both ends of the notification link from one address,
/// and a bad QR window set from the environment is still named.
#[test]
fn all_in_development_shows_the_derived_qr_link_and_names_a_bad_qr_window() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchd"))
        .args(["--dump-config", "all"])
        .env_clear()
        .output()
        .expect("switchd runs");
    let dumped = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dumped.contains("[authorization.qr]"), "{dumped}");
    assert!(
        dumped.contains("notify_listen = \"127.0.0.1:50081\""),
        "{dumped}"
    );
    assert!(
        dumped.contains("notify_url = \"https://127.0.0.1:50081/qr/notify\""),
        "{dumped}"
    );
    let one = Command::new(env!("CARGO_BIN_EXE_switchd"))
        .args(["--dump-config", "authorization"])
        .env_clear()
        .output()
        .expect("switchd runs");
    assert!(
        !String::from_utf8_lossy(&one.stdout).contains("[authorization.qr]"),
        "a single service runs QR only where it is configured"
    );

    let output = switchd("all", &[("SWITCH__AUTHORIZATION__QR__QUERY_LIMIT_MS", "1")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("authorization.qr.query_limit_ms"),
        "{stderr}"
    );
}
