//! The AMQP headers of the topology's messages: every name in one place,
//! and how they are written and read.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// A job's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// How many jobs a batch message holds (absent: one).
pub const JOBS: &str = "x-jobs";
/// Why a job was dead-lettered (`retry::Reason`).
pub const REASON: &str = "x-reason";
/// Why the broker dead-lettered a message by itself (`delivery_limit`,
/// `rejected`, ...), when it did.
pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// The broker's record of each time it dead-lettered a message (a table
/// per death, newest first, with its `time`).
pub const DEATHS: &str = "x-death";
/// Failed attempts to store a dead letter's record.
pub const ATTEMPTS: &str = "x-attempts";
/// The error of a copy's last attempt.
pub const LAST_ERROR: &str = "x-last-error";
/// Attempts of a retry copy that stored its record but could not release
/// its number.
pub const RELEASE_ATTEMPTS: &str = "x-release-attempts";
/// When a job was dead-lettered, in ms since the epoch.
pub const DEAD_AT_MS: &str = "x-dead-at-ms";
/// When an operator discarded a dead letter, in ms since the epoch.
pub const DISCARDED_AT_MS: &str = "x-discarded-at-ms";

/// `properties` marked as a dead letter: why, after how many attempts,
/// the last error, and when (ms since the epoch).
pub fn dead(
    properties: BasicProperties,
    reason: &str,
    attempts: u32,
    error: &str,
    at_ms: u64,
) -> BasicProperties {
    with(
        properties,
        &[
            (REASON, reason),
            (ATTEMPTS, &attempts.to_string()),
            (LAST_ERROR, error),
            (DEAD_AT_MS, &at_ms.to_string()),
        ],
    )
}

/// Now, in ms since the epoch: the unit of the `-at-ms` headers.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `properties` with `pairs` added to its headers (replacing any of the
/// same name).
pub fn with(properties: BasicProperties, pairs: &[(&str, &str)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in pairs {
        headers.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    properties.with_headers(headers)
}

/// A header of a received message as text, whatever AMQP type it came as.
pub fn get(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.to_string()),
        AMQPValue::LongLongInt(value) => Some(value.to_string()),
        AMQPValue::LongInt(value) => Some(value.to_string()),
        AMQPValue::ShortInt(value) => Some(value.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_headers_keep_the_ones_there() {
        let properties = with(
            super::super::publish::json_properties(),
            &[("a", "1"), ("b", "2")],
        );
        let properties = with(properties, &[("b", "3")]);
        let headers = properties.headers().as_ref();
        assert_eq!(get(headers, "a").as_deref(), Some("1"));
        assert_eq!(get(headers, "b").as_deref(), Some("3"));
        assert_eq!(get(headers, "c"), None);
    }
}
