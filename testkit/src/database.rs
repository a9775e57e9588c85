//! A PostgreSQL database of one's own, dropped with the test.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server tests create their databases on; `TEST_DATABASE_URL`
/// overrides it (any database of that server, used for maintenance only).
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// `(user info, host:port)` of the server URL, to build the URLs of other
/// databases on it.
fn server_parts() -> (String, String) {
    let url = server_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let (credentials, location) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let host_port = location.split('/').next().unwrap_or("127.0.0.1:5432");
    (credentials.to_owned(), host_port.to_owned())
}

/// The name of a database nobody else uses. It is not created here: the
/// chat-system creates its database itself, and that is part of what the
/// tests check. Dropping this drops the database, whoever created it.
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    pub fn new() -> Self {
        Self {
            name: crate::unique("test"),
        }
    }

    /// The URL of this database on the shared server.
    pub fn url(&self) -> String {
        let (credentials, host_port) = server_parts();
        format!("postgres://{credentials}@{host_port}/{}", self.name)
    }

    /// The URL of this database reached through `address` (a proxy in
    /// front of the server) instead of the server's own address.
    pub fn url_via(&self, address: std::net::SocketAddr) -> String {
        let (credentials, _) = server_parts();
        format!("postgres://{credentials}@{address}/{}", self.name)
    }

    /// Runs `sql` in this database (once the chat-system created it): a
    /// test changing the schema under the code, to make it fail.
    pub async fn execute(&self, sql: &'static str) {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connecting to the test database");
        sqlx::raw_sql(sql)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
        let _ = connection.close().await;
    }

    /// The server's own address, for a proxy to forward to.
    pub fn server_address() -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let (_, host_port) = server_parts();
        host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .expect("TEST_DATABASE_URL names a reachable host and port")
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime we may block, so the cleanup gets a
        // thread and a small runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect(&server_url()).await?;
                let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut connection)
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}
