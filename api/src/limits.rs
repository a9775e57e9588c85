//! Whether the api's largest message fits the chat-system: a message the
//! api accepted must never be refused by the chat-system as too large.
//!
//! The worker sends each record in the chat-system's bulk write, its body
//! JSON-escaped (up to six bytes for one), so `MAX_MESSAGE_BYTES` must fit
//! the chat-system's `MAX_BODY_BYTES` as `largest_record` counts it. The
//! chat-system tells its limit in `/readyz`; the api learns it at start
//! and at every `/readyz`. When it does not fit, the api says so in an
//! error line and in `/readyz` (not ready), and refuses (413) any message
//! whose record would be too large, so nothing it accepts is refused
//! later.

use std::sync::atomic::{AtomicU64, Ordering};

use shared::chat_system::{BULK_ENVELOPE_BYTES, RECORD_OVERHEAD_BYTES, largest_record};

use crate::error::ApiError;

pub(crate) struct MessageLimit {
    /// `MAX_MESSAGE_BYTES`.
    configured: usize,
    /// The chat-system's `MAX_BODY_BYTES`; 0 while unknown.
    chat_system: AtomicU64,
}

impl MessageLimit {
    pub(crate) fn new(configured: usize) -> Self {
        Self {
            configured,
            chat_system: AtomicU64::new(0),
        }
    }

    /// The chat-system takes bodies of at most `max_body_bytes`; says
    /// whether the largest message fits, and logs it once when not.
    pub(crate) fn learn(&self, max_body_bytes: u64) -> bool {
        let before = self.chat_system.swap(max_body_bytes, Ordering::Relaxed);
        let fits = self.fits(max_body_bytes);
        if !fits && before != max_body_bytes {
            tracing::error!(
                max_message_bytes = self.configured,
                chat_system_max_body_bytes = max_body_bytes,
                needed = largest_record(self.configured) + BULK_ENVELOPE_BYTES,
                "MAX_MESSAGE_BYTES does not fit the chat-system's MAX_BODY_BYTES: messages whose record would not fit are refused"
            );
        }
        fits
    }

    /// Whether the largest message fits what is known of the chat-system
    /// (`true` while nothing is).
    pub(crate) fn fits_chat_system(&self) -> bool {
        match self.chat_system.load(Ordering::Relaxed) {
            0 => true,
            known => self.fits(known),
        }
    }

    fn fits(&self, max_body_bytes: u64) -> bool {
        (largest_record(self.configured) + BULK_ENVELOPE_BYTES) as u64 <= max_body_bytes
    }

    /// Refuses a message longer than `MAX_MESSAGE_BYTES`, or whose record
    /// the chat-system would refuse as too large.
    pub(crate) fn check(&self, text: &str) -> Result<(), ApiError> {
        if text.len() > self.configured {
            return Err(ApiError::TooLarge(format!(
                "message is longer than {} bytes",
                self.configured
            )));
        }
        let chat_system = self.chat_system.load(Ordering::Relaxed);
        if chat_system != 0 && !self.fits(chat_system) {
            let escaped = serde_json::to_string(text).map_or(usize::MAX, |json| json.len());
            let record = escaped.saturating_add(RECORD_OVERHEAD_BYTES + BULK_ENVELOPE_BYTES);
            if record as u64 > chat_system {
                return Err(ApiError::TooLarge(format!(
                    "message is too large for the chat-system, which takes {chat_system} bytes per request"
                )));
            }
        }
        Ok(())
    }

    /// Learns the chat-system's limit once it answers, at start (until
    /// `stop`).
    pub(crate) async fn learn_at_start(
        &self,
        chat_system: &shared::chat_system::ChatSystem,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Ok(shared::chat_system::Ready {
                max_body_bytes: Some(max_body_bytes),
                ..
            }) = chat_system.ready().await
            {
                self.learn(max_body_bytes);
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_whose_record_would_not_fit_is_refused_once_the_limit_is_known() {
        let limit = MessageLimit::new(64 * 1024);
        let controls = "\u{1}".repeat(20_000);
        assert!(limit.check(&controls).is_ok(), "nothing known yet");

        assert!(!limit.learn(100_000), "64 KiB escaped needs ~385 KiB");

        assert!(!limit.fits_chat_system());
        assert!(
            limit.check(&"x".repeat(20_000)).is_ok(),
            "20 KB of text fits"
        );
        assert!(
            matches!(limit.check(&controls), Err(ApiError::TooLarge(_))),
            "20,000 control characters take 120 KB escaped"
        );
        assert!(limit.learn(1024 * 1024), "the default 1 MiB fits");
        assert!(limit.check(&controls).is_ok());
    }
}
