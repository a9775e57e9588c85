//! W3C Trace Context: the `traceparent` that lets one create be followed
//! from the client's request through the api, the queue and the worker to
//! the chat-system's row, across the three processes' logs.
//!
//! Only what the project needs of the standard
//! (<https://www.w3.org/TR/trace-context/>): parse a `traceparent`, start a
//! trace when none came in, and make a child for the next hop
//! (`telemetry::hop` decides which, and with spans exported names the hop's
//! exported span). Each process
//! puts the trace id on its spans (`trace_id`), so every log line about the
//! record carries it.

use std::fmt;

/// `00-{trace id}-{parent id}-{flags}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// Trace-flags bit 0: the caller may have recorded this trace.
const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Parses a `traceparent` header. Versions other than `00` are read as
    /// `00` when their first four fields have its shape, as the standard
    /// asks; `ff`, all-zero ids and anything malformed are `None`.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut fields = header.split('-');
        let version = fields.next()?;
        let trace_id = fields.next()?;
        let parent_id = fields.next()?;
        let flags = fields.next()?;
        let rest_ok = if version == "00" {
            fields.next().is_none()
        } else {
            true
        };
        let ok = rest_ok
            && is_hex(version, 2)
            && version != "ff"
            && is_hex(trace_id, 32)
            && is_hex(parent_id, 16)
            && is_hex(flags, 2);
        if !ok {
            return None;
        }
        let parsed = Self {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            parent_id: u64::from_str_radix(parent_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (parsed.trace_id != 0 && parsed.parent_id != 0).then_some(parsed)
    }

    /// A new trace, for a request that came without one.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            parent_id: nonzero_u64(),
            flags: SAMPLED,
        }
    }

    /// The context a hop passes on: same trace, a new parent id (this
    /// hop's span).
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero_u64(),
            ..*self
        }
    }

    /// From the ids of an exported span (`telemetry::hop`); `None` for the
    /// all-zero ids the standard forbids.
    pub(crate) fn from_ids(trace_id: u128, parent_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// `(trace id, parent id, flags)`.
    pub(crate) fn ids(&self) -> (u128, u64, u8) {
        (self.trace_id, self.parent_id, self.flags)
    }

    /// The 32 hex digits every log line of the trace carries.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl serde::Serialize for TraceParent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn is_hex(field: &str, length: usize) -> bool {
    field.len() == length
        && field
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn nonzero_u128() -> u128 {
    loop {
        let value = uuid::Uuid::new_v4().as_u128();
        if value != 0 {
            return value;
        }
    }
}

fn nonzero_u64() -> u64 {
    nonzero_u128() as u64 | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_standards_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_parent() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child, parent);
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        let cases = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for header in cases {
            assert_eq!(TraceParent::parse(header), None, "{header:?}");
        }
        let fresh = TraceParent::root();
        assert_eq!(TraceParent::parse(&fresh.to_string()), Some(fresh));
    }

    #[test]
    fn a_future_version_is_read_as_version_00() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let parsed = TraceParent::parse(future).expect("readable");
        assert_eq!(parsed.to_string(), EXAMPLE);
    }
}
