//! Every metric the worker exports, with its help text and the series it
//! starts with; `docs/METRICS.md` says what each one means.

use shared::telemetry::Metric;
use shared::telemetry::MetricKind::{Counter, Gauge, Histogram};

const UNLABELLED: &[&[(&str, &str)]] = &[&[]];

pub const METRICS: &[Metric] = &[
    Metric {
        name: "worker_jobs_total",
        kind: Counter,
        help: "Jobs handled, by kind (chat, message) and outcome (stored, retried, dead_lettered, requeued).",
        start: &[
            &[("kind", "chat"), ("outcome", "stored")],
            &[("kind", "chat"), ("outcome", "retried")],
            &[("kind", "chat"), ("outcome", "dead_lettered")],
            &[("kind", "chat"), ("outcome", "requeued")],
            &[("kind", "message"), ("outcome", "stored")],
            &[("kind", "message"), ("outcome", "retried")],
            &[("kind", "message"), ("outcome", "dead_lettered")],
            &[("kind", "message"), ("outcome", "requeued")],
        ],
    },
    Metric {
        name: "worker_dead_letters_total",
        kind: Counter,
        help: "Jobs dead-lettered, by reason.",
        start: &[
            &[("reason", "conflict")],
            &[("reason", "unknown_application")],
            &[("reason", "rejected")],
            &[("reason", "malformed")],
            &[("reason", "exhausted")],
        ],
    },
    Metric {
        name: "worker_acks_sent_total",
        kind: Counter,
        help: "Deliveries acknowledged to RabbitMQ.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_batch_deliveries",
        kind: Histogram,
        help: "Deliveries gathered into one batch.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_batches_in_flight",
        kind: Gauge,
        help: "Batches being handled right now.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_store_batch_records",
        kind: Histogram,
        help: "Records per bulk write to the chat-system.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_store_duration_seconds",
        kind: Histogram,
        help: "Time of one bulk write to the chat-system.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_store_lag_seconds",
        kind: Histogram,
        help: "Time from the api accepting a record to its record stored.",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_publish_blocked",
        kind: Gauge,
        help: "1 while RabbitMQ blocks the worker's publish connection (retries and dead letters).",
        start: UNLABELLED,
    },
    Metric {
        name: "worker_queue_messages",
        kind: Gauge,
        help: "Messages ready in the jobs queue, the retry queues and the dead-letter queue, read at each scrape (NaN when the broker cannot be read).",
        start: &[],
    },
    Metric {
        name: "worker_queue_consumers",
        kind: Gauge,
        help: "Consumers on the jobs queue, read at each scrape (NaN when the broker cannot be read).",
        start: &[],
    },
];
