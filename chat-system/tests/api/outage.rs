//! PostgreSQL going away: requests get a quick 503 with `Retry-After`, and
//! the service recovers by itself once the database is back.

use std::time::Duration;

use testkit::{TestChatSystem, eventually};

#[tokio::test]
async fn a_database_outage_is_answered_with_503_and_recovered_from() {
    let app = TestChatSystem::start_with(true, &["--database-acquire-timeout-ms", "300"]).await;
    let token = app.application_with_chats(1).await;
    let proxy = app.database_proxy.as_ref().expect("a database proxy");

    proxy.cut();
    let started = std::time::Instant::now();
    let during = app
        .put_message(&token, 1, 1, "written during the outage")
        .await;
    let ready_during = app.get("/readyz").await;

    assert_eq!(during.status, 503, "{}", during.body);
    assert_eq!(during.retry_after.as_deref(), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered fast: {:?}",
        started.elapsed()
    );
    assert_eq!(ready_during.status, 503);

    proxy.restore();
    eventually(
        "the chat-system to write again",
        Duration::from_secs(10),
        || async {
            let answer = app
                .put_message(&token, 1, 1, "written after the outage")
                .await;
            (answer.status == 201).then_some(())
        },
    )
    .await;
    // Reads recover too: a pooled connection the outage broke answers its
    // one request 503 (Retry-After) and is replaced.
    let stored = eventually(
        "the chat-system to read again",
        Duration::from_secs(10),
        || async {
            let answer = app
                .get(&format!("/applications/{token}/chats/1/messages/1"))
                .await;
            (answer.status == 200).then_some(answer)
        },
    )
    .await;
    assert_eq!(stored.body["body"], "written after the outage");
}
