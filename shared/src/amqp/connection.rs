//! Reaching RabbitMQ: the nodes of `AMQP_URL`, a connection to the first
//! that answers (bounded), the delays between attempts, and the version
//! the broker announces (which lapin does not keep).

use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};

/// How long connecting to RabbitMQ may take before it counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes `AMQP_URL` names: one URL, or several separated by commas
/// (the nodes of a cluster), tried in order.
pub fn nodes(url: &str) -> impl Iterator<Item = &str> {
    url.split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
}

/// Opens a connection named `name` (as the broker's management UI shows
/// it) to the first node of `url` that answers, failing after
/// [`CONNECT_TIMEOUT`] per node rather than hanging on a broker that
/// accepts TCP but does not answer. Called again after a connection is
/// lost, it moves to the next node that answers.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut failure = None;
    for node in nodes(url) {
        match connect_node(node, name).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failure = Some(error),
        }
    }
    Err(failure.unwrap_or_else(|| {
        lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
            lapin::ConnectionState::Closed,
        ))
    }))
}

/// The largest frame this client asks for, unless `AMQP_URL` says
/// (`?frame_max=`). lapin keeps two buffers of 32 frames per connection,
/// written through, so RabbitMQ's default of 128 KiB costs every
/// connection 8 MiB of resident memory; at 32 KiB it is 2 MiB, and a batch
/// message of `PUBLISH_BATCH_BYTES` (256 KiB) goes out in 8 frames
/// instead of 2.
pub const FRAME_MAX: u32 = 32 * 1024;

async fn connect_node(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|reason: String| {
        lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
        )))
    })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties)).await {
        Ok(connection) => connection,
        Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(
            std::sync::Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out connecting to RabbitMQ",
            )),
        ))),
    }
}

/// The delays between attempts to reach RabbitMQ again: 100 ms doubling to
/// 5 s, jittered so a fleet does not reconnect in step, never giving up.
pub fn reconnect_delays() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The version RabbitMQ announces in its `connection.start` (lapin does
/// not keep it), read over a throwaway TCP connection: send the protocol
/// header, read the first frame, find `version` in its server properties.
pub async fn broker_version(url: &str) -> Option<String> {
    for node in nodes(url) {
        if let Some(version) = node_version(node).await {
            return Some(version);
        }
    }
    None
}

async fn node_version(url: &str) -> Option<String> {
    use lapin::types::parsing::parse_field_table;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    let address = (uri.authority.host.as_str(), uri.authority.port);
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        // Frame: type (1), channel (2), size (4), payload, end (0xCE).
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut payload = vec![0u8; size.min(1 << 20)];
        stream.read_exact(&mut payload).await.ok()?;
        // connection.start: class 10, method 10, version major and minor,
        // then the server properties.
        if header[0] != 1 || payload.get(..4) != Some(&[0, 10, 0, 10]) {
            return None;
        }
        let (_, properties) = parse_field_table(payload.get(6..)?).ok()?;
        match properties.inner().get("version")? {
            AMQPValue::LongString(version) => Some(version.to_string()),
            AMQPValue::ShortString(version) => Some(version.to_string()),
            _ => None,
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read).await.ok()?
}
