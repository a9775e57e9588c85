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

/// A chat of `count` messages that all match `word`, stored in bulk.
async fn large_chat(app: &testkit::TestChatSystem, count: i64, word: &str) -> String {
    let token = app.application_with_chats(1).await;
    for start in (1..=count).step_by(5000) {
        let records: Vec<serde_json::Value> = (start..(start + 5000).min(count + 1))
            .map(|number| {
                serde_json::json!({
                    "kind": "message", "token": token, "chat": 1, "number": number,
                    "body": format!("{word} number {number} of a long conversation about {word}"),
                })
            })
            .collect();
        let request = app
            .writer
            .post(app.url("/records"))
            .json(&serde_json::json!({ "records": records }));
        assert_eq!(http::send(request).await.status, 200);
    }
    token
}

#[tokio::test]
async fn searches_cannot_take_the_connections_writes_need() {
    // Two connections for writes and other reads, one for searches.
    let app = testkit::TestChatSystem::start_with(
        false,
        &[
            "--database-max-connections",
            "2",
            "--search-max-connections",
            "1",
            "--database-acquire-timeout-ms",
            "30000",
        ],
    )
    .await;
    let token = large_chat(&app, 20_000, "weather").await;
    let search = format!("/applications/{token}/chats/1/messages/search?q=weather");
    let searched = std::sync::atomic::AtomicUsize::new(0);

    // Two hundred searches queue up for connections; then five writes.
    let searches = futures::future::join_all((0..200).map(|_| async {
        let answer = app.get(&search).await;
        searched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answer.status
    }));
    let writes = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut statuses = Vec::new();
        for number in 1..=5 {
            let answer = app
                .put_message(&token, 1, 20_000 + number, "written meanwhile")
                .await;
            statuses.push(answer.status);
        }
        searched.load(std::sync::atomic::Ordering::SeqCst)
    };
    let (statuses, searched_before_the_writes_ended) = tokio::join!(searches, writes);

    assert!(statuses.iter().all(|status| *status == 200));
    assert!(
        searched_before_the_writes_ended < 100,
        "the writes waited for {searched_before_the_writes_ended} of 200 searches"
    );
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 20_005);
}

#[tokio::test]
async fn a_search_that_runs_too_long_is_cancelled_and_one_too_wide_refused() {
    let app = testkit::TestChatSystem::start_with(false, &["--search-timeout-ms", "1"]).await;
    let token = large_chat(&app, 5000, "weather").await;

    let slow = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=weather"
        ))
        .await;
    let wide = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q={}",
            vec!["w"; 17].join("+")
        ))
        .await;

    assert_eq!(slow.status, 503, "{}", slow.body);
    assert_eq!(slow.error(), "the search took too long");
    assert_eq!(wide.status, 400, "{}", wide.body);
    assert_eq!(wide.error(), "q must have at most 16 words");
}
