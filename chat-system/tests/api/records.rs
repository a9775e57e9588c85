//! `POST /records`: many records in one request, a result per record with
//! the meaning of the single `PUT`s, each row stored once, counts exact.

use futures::future::join_all;
use serde_json::{Value, json};
use testkit::{Answer, TestChatSystem, http};

use crate::helpers::spawn_app;

async fn post(app: &TestChatSystem, records: Value) -> Answer {
    let request = app
        .writer
        .post(app.url("/records"))
        .json(&json!({ "records": records }));
    http::send(request).await
}

fn results(answer: &Answer) -> Vec<(u64, String)> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| {
            (
                result["status"].as_u64().expect("a status"),
                result["result"].as_str().expect("a result").to_owned(),
            )
        })
        .collect()
}

fn chat(token: &str, number: i64) -> Value {
    json!({ "kind": "chat", "token": token, "number": number })
}

fn message(token: &str, chat: i64, number: i64, body: &str) -> Value {
    json!({ "kind": "message", "token": token, "chat": chat, "number": number, "body": body })
}

#[tokio::test]
async fn a_mixed_batch_of_two_applications_gets_a_result_per_record() {
    let app = spawn_app().await;
    let first = app.application_with_chats(1).await;
    let second = app.create_application("second").await;
    assert_eq!(app.put_message(&first, 1, 1, "already").await.status, 201);

    let answer = post(
        &app,
        json!([
            message(&second, 1, 1, "its chat comes later in the batch"),
            chat(&second, 1),
            chat(&first, 1),
            chat(&first, 2),
            message(&first, 1, 1, "already"),
            message(&first, 1, 1, "another body"),
            message(&first, 1, 2, "new"),
            message(&first, 1, 2, "new"),
            message(&first, 1, 3, "first of two"),
            message(&first, 1, 3, "second of two"),
            message(&first, 9, 1, "no such chat"),
            chat("no-such-token", 1),
            message("no-such-token", 1, 1, "no such application"),
            message(&first, 1, 4, ""),
            chat(&first, 0),
        ]),
    )
    .await;

    let expected = [
        (201, "created"),
        (201, "created"),
        (200, "exists"),
        (201, "created"),
        (200, "exists"),
        (409, "conflict"),
        (201, "created"),
        (200, "exists"),
        (201, "created"),
        (409, "conflict"),
        (404, "unknown_chat"),
        (404, "unknown_application"),
        (404, "unknown_application"),
        (400, "invalid"),
        (400, "invalid"),
    ];
    let expected: Vec<(u64, String)> = expected
        .iter()
        .map(|(status, result)| (*status, (*result).to_owned()))
        .collect();
    assert_eq!(results(&answer), expected);

    let stored = app.messages(&first, 1).await;
    assert_eq!(
        stored,
        [
            (1, "already".into()),
            (2, "new".into()),
            (3, "first of two".into())
        ],
        "each row once, never overwritten"
    );
    assert_eq!(
        app.messages(&second, 1).await,
        [(1, "its chat comes later in the batch".into())]
    );
    let first_app = app.get(&format!("/applications/{first}")).await;
    assert_eq!(first_app.body["chats_count"], 2);
    assert_eq!(first_app.body["last_chat_number"], 2);
    let first_chat = app.get(&format!("/applications/{first}/chats/1")).await;
    assert_eq!(first_chat.body["messages_count"], 3);
    assert_eq!(first_chat.body["last_message_number"], 3);
    assert_eq!(app.chats_count(&second).await, 1);
}

#[tokio::test]
async fn a_hundred_concurrent_batches_into_the_same_chats_keep_exact_counts() {
    // Sixteen transactions at once, one request each: batches really do
    // run side by side (with requests sharing transactions they would
    // mostly queue behind each other).
    let flags = [
        "--database-write-lanes",
        "16",
        "--database-write-batch",
        "1",
    ];
    let app = TestChatSystem::start_with(false, &flags).await;
    let first = app.application_with_chats(4).await;
    let second = app.application_with_chats(4).await;

    // Batch `seed` writes numbers seed+1 ..= seed+5 in each of the 8 chats
    // of both applications, in an order of its own: batches running at the
    // same time insert many of the same new rows in different orders (and
    // rewrite rows already there), and now and then a new chat alongside
    // (a chat locks its application, which would serialize every batch).
    let batch = |seed: usize| {
        let mut records = Vec::new();
        for step in 0..40 {
            let index = (seed * 7 + step * 13) % 40;
            let token = if index.is_multiple_of(2) {
                &first
            } else {
                &second
            };
            let chat = (index / 2 % 4 + 1) as i64;
            let number = (seed + index / 8 + 1) as i64;
            records.push(message(token, chat, number, &format!("m{number}")));
        }
        if seed.is_multiple_of(10) {
            records.push(chat(&first, 5 + (seed / 10 % 3) as i64));
        }
        Value::Array(records)
    };
    let answers = join_all((0..100).map(|seed| post(&app, batch(seed)))).await;

    for answer in &answers {
        for (status, result) in results(answer) {
            assert!(status == 200 || status == 201, "{status} {result}");
        }
    }
    for token in [&first, &second] {
        for chat in 1..=4 {
            let stored = app
                .get(&format!("/applications/{token}/chats/{chat}"))
                .await;
            assert_eq!(stored.body["messages_count"], 104, "{}", stored.body);
            assert_eq!(stored.body["last_message_number"], 104);
            assert_eq!(app.messages(token, chat).await.len(), 104);
        }
    }
    assert_eq!(app.chats_count(&first).await, 7);
    assert_eq!(app.chats_count(&second).await, 4);
}

#[tokio::test]
async fn a_batch_that_cannot_be_read_is_refused_whole() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let cases = [
        (
            "not JSON",
            app.writer.post(app.url("/records")).body("{"),
            400,
        ),
        (
            "no records field",
            app.writer.post(app.url("/records")).json(&json!({})),
            400,
        ),
        (
            "unknown kind",
            app.writer
                .post(app.url("/records"))
                .json(&json!({ "records": [{ "kind": "thread", "token": token }] })),
            400,
        ),
        (
            "too many records",
            app.writer.post(app.url("/records")).json(&json!({
                "records": vec![chat(&token, 1); 5001]
            })),
            413,
        ),
    ];
    for (case, request, status) in cases {
        let answer = http::send(request).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(!answer.error().is_empty(), "{case}");
    }
    assert_eq!(app.chats_count(&token).await, 1, "nothing stored");
}

#[tokio::test]
async fn a_record_the_database_refuses_fails_alone_and_its_neighbours_are_stored() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let other = app.create_application("other").await;
    // A rule of this test's database that one record breaks: a constraint
    // (SQLSTATE 23514), not a data exception (class 22).
    app.database
        .execute("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (body NOT LIKE '%poison%')")
        .await;

    let answer = post(
        &app,
        json!([
            message(&token, 1, 1, "fine"),
            message(&token, 1, 2, "a poison pill"),
            chat(&other, 1),
            message(&token, 1, 3, "also fine"),
        ]),
    )
    .await;

    assert_eq!(
        results(&answer),
        [
            (201, "created".to_owned()),
            (400, "invalid".to_owned()),
            (201, "created".to_owned()),
            (201, "created".to_owned()),
        ]
    );
    let error = answer.body["results"][1]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("no_poison"),
        "{error}"
    );
    assert_eq!(
        app.messages(&token, 1).await,
        [(1, "fine".to_owned()), (3, "also fine".to_owned())]
    );
    assert_eq!(app.chats_count(&other).await, 1);
}

#[tokio::test]
async fn numbers_above_2_to_the_53_are_refused_record_by_record() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let answer = post(
        &app,
        json!([
            chat(&token, 9_007_199_254_740_993),
            chat(&token, i64::MAX),
            message(&token, 1, 9_007_199_254_740_993, "too far"),
            chat(&token, 9_007_199_254_740_992),
        ]),
    )
    .await;

    assert_eq!(
        results(&answer),
        [
            (400, "invalid".to_owned()),
            (400, "invalid".to_owned()),
            (400, "invalid".to_owned()),
            (201, "created".to_owned()),
        ]
    );
}
