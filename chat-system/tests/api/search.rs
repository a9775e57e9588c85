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

/// The answer to `q` (and `extra` query parameters) in chat 1 of `token`.
async fn search(
    app: &testkit::TestChatSystem,
    token: &str,
    q: &str,
    extra: &[(&str, &str)],
) -> http::Answer {
    let request = app
        .client
        .get(app.url(&format!("/applications/{token}/chats/1/messages/search")))
        .query(&[("q", q)])
        .query(extra);
    http::send(request).await
}

#[tokio::test]
async fn the_start_of_a_word_finds_the_word() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "hello there").await;
    app.put_message(&token, 1, 2, "goodbye").await;

    let hits = search(&app, &token, "hel", &[]).await;

    assert_eq!(hits.status, 200, "{}", hits.body);
    assert_eq!(numbers(&hits.body), [1], "{}", hits.body);
    assert_eq!(hits.body["items"][0]["body"], "hello there");
    assert!(hits.body["items"][0]["rank"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_near_miss_is_found_after_every_word_match() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "say hello to everyone").await;
    app.put_message(&token, 1, 2, "help is on its way").await;
    app.put_message(&token, 1, 3, "helo, I typed it wrong")
        .await;

    let typo = search(&app, &token, "helo", &[]).await;
    let unrelated = search(&app, &token, "xylophone", &[]).await;

    assert_eq!(typo.status, 200, "{}", typo.body);
    assert_eq!(
        numbers(&typo.body),
        [3, 1],
        "the word match first, then the near miss; `help` is not near: {}",
        typo.body
    );
    assert_eq!(typo.body["items"][1]["rank"], 0.0, "a near miss has rank 0");
    assert_eq!(
        typo.body["items"][1]["snippet"], "say <mark>hello</mark> to everyone",
        "the near word marked, a short body whole"
    );
    assert_eq!(numbers(&unrelated.body), Vec::<i64>::new());
}

#[tokio::test]
async fn a_hit_comes_with_a_snippet_of_escaped_html_with_its_matches_marked() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let long = format!(
        "{} the weather changed {}",
        "filler words before ".repeat(20),
        "and many words after it ".repeat(20)
    );
    app.put_message(&token, 1, 1, &long).await;
    app.put_message(&token, 1, 2, "weathering a & b \"quoted\" 5 > 3")
        .await;

    let hits = search(&app, &token, "weath", &[]).await;

    assert_eq!(hits.status, 200, "{}", hits.body);
    let snippets: Vec<&str> = hits.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["snippet"].as_str().expect("a snippet"))
        .collect();
    assert_eq!(snippets.len(), 2, "{}", hits.body);
    for snippet in &snippets {
        assert!(snippet.contains("<mark>weath"), "{snippet}");
        assert!(snippet.contains("</mark>"), "{snippet}");
    }
    let long_snippet = snippets
        .iter()
        .find(|snippet| snippet.contains("changed"))
        .expect("the long message's snippet");
    assert!(
        long_snippet.len() < long.len() / 2,
        "a part of the body around the match: {long_snippet}"
    );
    let escaped = snippets
        .iter()
        .find(|snippet| snippet.contains("quoted"))
        .expect("the short message's snippet");
    assert!(
        escaped.contains("&amp;")
            && escaped.contains("&quot;quoted&quot;")
            && escaped.contains("&gt;"),
        "the body's text is escaped: {escaped}"
    );
}

#[tokio::test]
async fn a_search_pages_by_offset_without_overlap() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    for number in 1..=5 {
        app.put_message(&token, 1, number, &format!("rain report {number}"))
            .await;
    }

    let first = search(&app, &token, "rain", &[("limit", "3")]).await;
    let next = first.body["next_offset"].as_i64().expect("a next page");
    let second = search(
        &app,
        &token,
        "rain",
        &[("limit", "3"), ("offset", &next.to_string())],
    )
    .await;
    let bad = search(&app, &token, "rain", &[("offset", "-1")]).await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(next, 3);
    assert_eq!(numbers(&first.body).len(), 3);
    assert_eq!(numbers(&second.body).len(), 2, "{}", second.body);
    assert!(
        second.body["next_offset"].is_null(),
        "the last page: {}",
        second.body
    );
    let mut all = numbers(&first.body);
    all.extend(numbers(&second.body));
    all.sort();
    assert_eq!(all, [1, 2, 3, 4, 5], "every hit once");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error(), "offset must be an integer from 0 to 10000");
}

#[tokio::test]
async fn tsquery_operators_in_the_query_are_taken_as_words() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "a b c").await;
    app.put_message(&token, 1, 2, "bee's knees").await;

    for query in [
        "a & b | !c :*",
        "'bee''s",
        "b:*",
        "\\",
        "!(",
        "a <-> b",
        "':*'",
    ] {
        let answer = search(&app, &token, query, &[]).await;
        assert_eq!(answer.status, 200, "{query:?}: {}", answer.body);
    }
    let words = search(&app, &token, "a & b | !c :*", &[]).await;
    assert_eq!(numbers(&words.body), [1], "{}", words.body);
}
