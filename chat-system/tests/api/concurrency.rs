//! The cached counts stay exact with many writers at once.

use futures::future::join_all;

use crate::helpers::spawn_app;

#[tokio::test]
async fn counts_are_exact_under_100_concurrent_chat_writers() {
    let app = spawn_app().await;
    let token = app.create_application("busy").await;

    // Every chat twice, as a redelivery would: 200 writers, 100 chats.
    let writes = (1..=100)
        .chain(1..=100)
        .map(|chat| app.put_chat(&token, chat));
    let statuses: Vec<u16> = join_all(writes)
        .await
        .iter()
        .map(|answer| answer.status)
        .collect();

    assert_eq!(
        statuses.iter().filter(|status| **status == 201).count(),
        100
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        100
    );
    let application = app.get(&format!("/applications/{token}")).await;
    assert_eq!(application.body["chats_count"], 100);
    assert_eq!(application.body["last_chat_number"], 100);
}

#[tokio::test]
async fn counts_are_exact_under_100_concurrent_message_writers() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let writes = (1..=100).map(|number| app.put_message(&token, 1, number, "same text"));
    let statuses: Vec<u16> = join_all(writes)
        .await
        .iter()
        .map(|answer| answer.status)
        .collect();

    assert!(statuses.iter().all(|status| *status == 201), "{statuses:?}");
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 100);
    assert_eq!(chat.body["last_message_number"], 100);
}

#[tokio::test]
async fn racing_redeliveries_of_one_message_store_one_row() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let writes = (0..50).map(|_| app.put_message(&token, 1, 7, "raced"));
    let statuses: Vec<u16> = join_all(writes)
        .await
        .iter()
        .map(|answer| answer.status)
        .collect();

    assert_eq!(
        statuses.iter().filter(|status| **status == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        49,
        "{statuses:?}"
    );
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 1);
}
