//! `sslmode=verify-full` in `database.url` reaches PostgreSQL over TLS:
//! the pool's connections are encrypted and the server's certificate is
//! verified against `sslrootcert` (a wrong root is refused). The server
//! here is the machine's PostgreSQL, whose certificate names `localhost`;
//! its file is read from the server itself (`SHOW ssl_cert_file`), so the
//! test trusts exactly the certificate the server presents.

use sqlx::Connection;
use switch_platform::db::{self, DatabaseConfig};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn server_certificate() -> String {
    let mut conn = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(ssl, "on", "the test's PostgreSQL must serve TLS");
    sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn over_tls(root: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: format!(
            "postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={root}"
        ),
        max_connections: 1,
        ..DatabaseConfig::default()
    }
}

#[tokio::test]
async fn verify_full_connects_over_tls_and_refuses_a_certificate_it_cannot_verify() {
    let certificate = server_certificate().await;
    let config = over_tls(&certificate);
    let pool = db::connect(&config, "public").await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "the pool's connection is not encrypted");
    pool.close().await;

    // A root that did not sign the server's certificate.
    let other = dev_certs::DevPki::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("db-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong_root = dir.join("other-ca.pem");
    std::fs::write(&wrong_root, other.ca_cert_pem()).unwrap();
    let refused = db::connect(&over_tls(&wrong_root.display().to_string()), "public").await;
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
}
