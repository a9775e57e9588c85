//! Every metric the api exports, with its help text and the series it
//! starts with; `docs/METRICS.md` says what each one means.

use shared::telemetry::Metric;
use shared::telemetry::MetricKind::{Counter, Gauge, Histogram};

const SCOPES: &[&[(&str, &str)]] = &[&[("scope", "chats")], &[("scope", "messages")]];
const PUBLISH_FAILURES: &[&[(&str, &str)]] = &[
    &[("reason", "not_connected")],
    &[("reason", "unroutable")],
    &[("reason", "nacked")],
    &[("reason", "unconfirmed")],
    &[("reason", "timed_out")],
    &[("reason", "not_sent")],
];
const UNLABELLED: &[&[(&str, &str)]] = &[&[]];

pub const METRICS: &[Metric] = &[
    Metric {
        name: "api_requests_total",
        kind: Counter,
        help: "Requests answered, by route and HTTP status.",
        start: &[],
    },
    Metric {
        name: "api_request_duration_seconds",
        kind: Histogram,
        help: "Time from a request's arrival to its answer, by route.",
        start: &[],
    },
    Metric {
        name: "api_numbers_drawn_total",
        kind: Counter,
        help: "Numbers drawn from Redis, by scope (chats, messages).",
        start: SCOPES,
    },
    Metric {
        name: "api_counter_seeds_total",
        kind: Counter,
        help: "Counters seeded from the chat-system on a Redis miss, by scope.",
        start: SCOPES,
    },
    Metric {
        name: "api_seed_lock_waits_total",
        kind: Counter,
        help: "Pauses of a draw waiting for another request's seed, by scope.",
        start: SCOPES,
    },
    Metric {
        name: "api_numbers_given_back_total",
        kind: Counter,
        help: "Drawn numbers given back because their job could not be queued, by the publish failure.",
        start: PUBLISH_FAILURES,
    },
    Metric {
        name: "api_draw_receipts_total",
        kind: Counter,
        help: "Draws whose reply was lost, resolved through their receipt: given back, none made, or unresolved (left in flight).",
        start: &[
            &[("outcome", "given_back")],
            &[("outcome", "none")],
            &[("outcome", "unresolved")],
        ],
    },
    Metric {
        name: "api_draws_not_replicated_total",
        kind: Counter,
        help: "Draws answered 503 because too few replicas confirmed them (REDIS_WAIT_REPLICAS), by why.",
        start: &[
            &[("why", "too_few")],
            &[("why", "busy")],
            &[("why", "timed_out")],
            &[("why", "stopped")],
        ],
    },
    Metric {
        name: "api_draw_round_size",
        kind: Histogram,
        help: "Draws (and Idempotency-Key confirms) sent to Redis in one round (one script call, or one pipeline and WAIT).",
        start: UNLABELLED,
    },
    Metric {
        name: "api_replicated_group_size",
        kind: Histogram,
        help: "Draws confirmed by one WAIT for replicas.",
        start: UNLABELLED,
    },
    Metric {
        name: "api_idempotent_replays_total",
        kind: Counter,
        help: "Idempotency-Key retries answered with the first number: still queued, or published again.",
        start: &[&[("how", "queued")], &[("how", "republished")]],
    },
    Metric {
        name: "api_rate_limited_total",
        kind: Counter,
        help: "Creates answered 429 by the per-application rate limit.",
        start: UNLABELLED,
    },
    Metric {
        name: "api_publish_batch_jobs",
        kind: Histogram,
        help: "Jobs per AMQP message published (group commit).",
        start: UNLABELLED,
    },
    Metric {
        name: "api_publish_failures_total",
        kind: Counter,
        help: "Jobs whose publish failed, by reason (timed_out is a confirm timeout).",
        start: PUBLISH_FAILURES,
    },
    Metric {
        name: "api_publish_resends_total",
        kind: Counter,
        help: "Jobs published again after their confirm was lost with the channel.",
        start: UNLABELLED,
    },
    Metric {
        name: "api_publish_channels_replaced_total",
        kind: Counter,
        help: "Publish channels replaced after a confirm timed out.",
        start: UNLABELLED,
    },
    Metric {
        name: "api_publish_blocked",
        kind: Gauge,
        help: "1 while RabbitMQ blocks the api's publishing (a resource alarm).",
        start: UNLABELLED,
    },
    Metric {
        name: "api_redis_durable",
        kind: Gauge,
        help: "1 when the last check found every Redis master keeping every write (fsynced AOF, no eviction); 0 otherwise, also with REDIS_DURABILITY=unsafe-none.",
        start: UNLABELLED,
    },
];
