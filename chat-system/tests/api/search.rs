use crate::helpers::spawn_app;
use testkit::http;

fn numbers(body: &serde_json::Value) -> Vec<i64> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|hit| hit["number"].as_i64().expect("a number"))
        .collect()
}

#[tokio::test]
async fn search_finds_a_chats_messages_best_match_first() {
    let app = spawn_app().await;
    let token = app.application_with_chats(2).await;
    app.put_message(&token, 1, 1, "the weather is nice").await;
    app.put_message(&token, 1, 2, "rain rain rain, more rain")
        .await;
    app.put_message(&token, 1, 3, "a little rain today").await;
    app.put_message(&token, 2, 1, "rain in another chat").await;

    let hits = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=rain"
        ))
        .await;

    assert_eq!(hits.status, 200);
    assert_eq!(
        numbers(&hits.body),
        [2, 3],
        "ranked, and only chat 1: {}",
        hits.body
    );
    assert_eq!(hits.body["items"][0]["body"], "rain rain rain, more rain");
}

#[tokio::test]
async fn a_search_without_matches_is_empty() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "hello").await;

    let hits = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=goodbye"
        ))
        .await;

    assert_eq!(hits.status, 200);
    assert_eq!(numbers(&hits.body), Vec::<i64>::new());
}

#[tokio::test]
async fn search_syntax_and_sql_in_the_query_are_just_text() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "drop table messages").await;
    let queries = [
        "'; DROP TABLE messages; --",
        "a & | ! ( ) : *",
        "\"unclosed quote",
        "-",
        "or",
        "你好",
    ];

    for query in queries {
        let request = app
            .client
            .get(app.url(&format!("/applications/{token}/chats/1/messages/search")))
            .query(&[("q", query)]);
        let answer = http::send(request).await;
        assert_eq!(answer.status, 200, "{query:?}: {}", answer.body);
    }
    let still_there = app
        .get(&format!("/applications/{token}/chats/1/messages/1"))
        .await;
    assert_eq!(still_there.status, 200);
}

#[tokio::test]
async fn search_needs_a_query_and_a_known_chat() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let no_query = app
        .get(&format!("/applications/{token}/chats/1/messages/search"))
        .await;
    let blank = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=%20"
        ))
        .await;
    let unknown_chat = app
        .get(&format!(
            "/applications/{token}/chats/2/messages/search?q=a"
        ))
        .await;

    assert_eq!(no_query.status, 400);
    assert_eq!(blank.status, 400);
    assert_eq!(unknown_chat.status, 404);
}
