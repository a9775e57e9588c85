//! `worker replay` brings dead letters home; `--dry-run` and filters
//! leave the others in place.

use std::time::Duration;

use shared::job::Job;
use shared::job::Kind;
use testkit::Fault;
use worker::Selection;

use crate::helpers::{TestStack, eventually_chats};

/// Dead-letters `jobs` by running them against a chat-system that fails,
/// with a single attempt each.
async fn dead_lettered(stack: &TestStack, jobs: &[Job]) {
    stack.upstream.fail_always(Fault::Status(503));
    stack.publish(jobs).await;
    let worker = stack.spawn_worker(&["--retry-max-attempts", "1"]).await;
    stack.wait_for_dead_letters(jobs.len() as u32).await;
    worker.stop().await;
    stack.upstream.heal();
}

#[tokio::test]
async fn replay_stores_every_dead_letter_and_empties_the_queue() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let jobs: Vec<Job> = (1..=5).map(|chat| Job::chat(token.clone(), chat)).collect();
    dead_lettered(&stack, &jobs).await;
    let config = stack.worker_config(&[]);

    let mut output = Vec::new();
    let report = worker::replay::replay(&config, &Selection::default(), false, &mut output)
        .await
        .unwrap();

    assert_eq!(report.replayed, 5);
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
    assert_eq!(
        String::from_utf8(output).unwrap().lines().count(),
        5,
        "a line per job"
    );
    let worker = stack.spawn_worker(&[]).await;
    eventually_chats(&stack, &token, 5).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_dry_run_lists_and_changes_nothing() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_lettered(
        &stack,
        &[Job::chat(token.clone(), 1), Job::chat(token.clone(), 2)],
    )
    .await;
    let config = stack.worker_config(&[]);

    let mut output = Vec::new();
    let filter = Selection {
        dry_run: true,
        ..Selection::default()
    };
    let report = worker::replay::replay(&config, &filter, true, &mut output)
        .await
        .unwrap();

    assert_eq!((report.matched, report.replayed), (2, 0));
    let listing = String::from_utf8(output).unwrap();
    assert!(listing.contains("reason exhausted"), "{listing}");
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 2, "still there")
        .await;
    stack
        .assert_queue_len(&stack.broker.jobs_queue(), 0, "no job left waiting")
        .await;
}

#[tokio::test]
async fn filters_and_limits_choose_what_is_replayed() {
    let stack = TestStack::start().await;
    let first = stack.application().await;
    let second = stack.application().await;
    let jobs = vec![
        Job::chat(first.clone(), 1),
        Job::message(first.clone(), 1, 1, "m".into()),
        Job::chat(second.clone(), 1),
        Job::chat(first.clone(), 2),
    ];
    dead_lettered(&stack, &jobs).await;
    let config = stack.worker_config(&[]);

    let filter = Selection {
        kind: Some(Kind::Chat),
        token: Some(first.clone()),
        limit: Some(1),
        dry_run: false,
    };
    let report = worker::replay::replay(&config, &filter, false, &mut Vec::new())
        .await
        .unwrap();

    assert_eq!(report.replayed, 1);
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 3, "the others stay")
        .await;
    let replayed = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    let replayed = &replayed[0];
    assert_eq!(
        (
            replayed.token.as_str(),
            replayed.chat_number(),
            replayed.attempt
        ),
        (first.as_str(), 1, 0)
    );
}

#[tokio::test]
async fn dead_letters_can_be_listed_again_and_again_and_stay() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let jobs: Vec<Job> = (1..=3).map(|chat| Job::chat(token.clone(), chat)).collect();
    dead_lettered(&stack, &jobs).await;
    let config = stack.worker_config(&[]);
    let version = shared::amqp::connection::broker_version(&config.broker.amqp_url)
        .await
        .expect("the broker announces its version");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "{version}"
    );

    // Each listing takes every letter and puts it back: more often than
    // RabbitMQ 4's default delivery limit (20) and RabbitMQ 3's -1 would
    // allow.
    for _ in 0..25 {
        let report = worker::replay::replay(&config, &Selection::default(), true, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(report.matched, 3);
    }

    stack
        .assert_queue_len(
            &stack.broker.dead_queue(),
            3,
            "listed 25 times, all still there",
        )
        .await;
    let report = worker::replay::replay(&config, &Selection::default(), false, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(report.replayed, 3, "and they can still be replayed");
}

#[tokio::test]
async fn a_replay_ends_even_when_its_letters_fail_again_at_once() {
    let stack = TestStack::start().await;
    // Letters of an unknown application: dead-lettered again as soon as a
    // worker takes them back.
    let jobs: Vec<Job> = (1..=5)
        .map(|chat| Job::chat("no-such-token".into(), chat))
        .collect();
    stack.publish(&jobs).await;
    let worker = stack.spawn_worker(&[]).await;
    stack.wait_for_dead_letters(5).await;
    let config = stack.worker_config(&[]);

    let (selection, mut output) = (Selection::default(), Vec::new());
    let run = worker::replay::replay(&config, &selection, false, &mut output);
    let report = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .unwrap();

    assert_eq!(report.found, 5);
    assert!(
        report.replayed <= 5,
        "it reads no more than the queue held at its start: {report:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn listing_and_dry_runs_finish_with_debug_logging() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_lettered(&stack, &[Job::chat(token.clone(), 1)]).await;

    for command in [&["dead-letters"][..], &["replay", "--dry-run"]] {
        let mut arguments = stack.worker_arguments(&[]);
        arguments.retain(|argument| argument != "--log" && argument != "warn");
        arguments.extend(command.iter().map(|part| part.to_string()));
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(&arguments)
            .env("RUST_LOG", "debug")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("`worker {command:?}` hung"))
            .expect("the worker binary runs");

        assert!(output.status.success(), "{command:?}: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("would replay 1 of 1"),
            "{command:?}: {stdout}"
        );
    }
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 1, "the letter stays")
        .await;
}

#[tokio::test]
async fn a_batch_letter_is_taken_apart_each_job_replayed_or_kept_on_its_own() {
    let stack = TestStack::start().await;
    let first = stack.application().await;
    let second = stack.application().await;
    let kept_job = Job::chat(second.clone(), 1);
    let replayed = [Job::chat(first.clone(), 1), Job::chat(first.clone(), 2)];
    let unreadable = br#"{"v":1,"kind":"nonsense"}"#.to_vec();
    // A batch the broker dead-lettered whole (its delivery limit), as the
    // broker leaves it: the api's batch message with the broker's headers.
    let encoded = [
        replayed[0].encode(),
        kept_job.encode(),
        unreadable.clone(),
        replayed[1].encode(),
    ];
    let properties = shared::amqp::publish::json_properties();
    let jobs: Vec<(&[u8], &lapin::BasicProperties)> = encoded
        .iter()
        .map(|payload| (payload.as_slice(), &properties))
        .collect();
    let config = stack.worker_config(&[]);
    let topology = shared::amqp::topology::Topology::new(&config.broker);
    let mut letter = shared::amqp::batch::jobs_message(topology.dead_exchange(), &jobs);
    letter.properties = shared::amqp::headers::with(
        letter.properties,
        &[("x-first-death-reason", "delivery_limit")],
    );
    stack.publish_message(letter).await;

    let mut listing = Vec::new();
    let listed = worker::replay::replay(&config, &Selection::default(), true, &mut listing)
        .await
        .unwrap();
    let listing = String::from_utf8(listing).unwrap();
    assert_eq!((listed.matched, listed.unreadable), (3, 1), "{listing}");
    assert_eq!(listing.lines().count(), 4, "a line per job: {listing}");

    let filter = Selection {
        token: Some(first.clone()),
        ..Selection::default()
    };
    let report = worker::replay::replay(&config, &filter, false, &mut Vec::new())
        .await
        .unwrap();

    assert_eq!(
        (report.replayed, report.skipped, report.unreadable),
        (2, 1, 1)
    );
    let mut back = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    back.sort_by_key(Job::number);
    assert_eq!(back, replayed, "the matching jobs, on their own");
    let mut letters = stack.dead_letters().await;
    letters.sort_by_key(|(payload, _)| payload.len());
    assert_eq!(letters.len(), 2, "the others, each a letter of its own");
    assert_eq!(
        letters[0].0, unreadable,
        "the undecodable job, byte for byte"
    );
    assert_eq!(Job::decode(&letters[1].0).unwrap(), kept_job);
    for (_, headers) in &letters {
        assert_eq!(
            crate::helpers::header(headers, "x-first-death-reason"),
            "delivery_limit"
        );
        assert!(shared::amqp::headers::get(Some(headers), shared::amqp::headers::JOBS).is_none());
    }
}
