use serde_json::json;
use testkit::http;

use crate::helpers::spawn_app;

#[tokio::test]
async fn putting_a_chat_twice_creates_it_once() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;

    let first = app.put_chat(&token, 1).await;
    let again = app.put_chat(&token, 1).await;

    assert_eq!(first.status, 201);
    assert_eq!(again.status, 200);
    assert_eq!(
        first.body,
        json!({ "number": 1, "messages_count": 0, "last_message_number": 0 })
    );
    assert_eq!(again.body, first.body);
    let application = app.get(&format!("/applications/{token}")).await;
    assert_eq!(application.body["chats_count"], 1);
}

#[tokio::test]
async fn the_highest_number_is_kept_apart_from_the_count_when_there_is_a_gap() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;

    app.put_chat(&token, 1).await;
    app.put_chat(&token, 5).await;
    app.put_chat(&token, 3).await;

    let application = app.get(&format!("/applications/{token}")).await;
    assert_eq!(application.body["chats_count"], 3);
    assert_eq!(application.body["last_chat_number"], 5);
}

#[tokio::test]
async fn a_chat_of_an_unknown_application_gets_404() {
    let app = spawn_app().await;

    let put = app.put_chat("no-such-token", 1).await;
    let get = app.get("/applications/no-such-token/chats/1").await;

    assert_eq!(put.status, 404);
    assert_eq!(put.error(), "unknown application");
    assert_eq!(get.status, 404);
    assert_eq!(get.error(), "unknown application");
}

#[tokio::test]
async fn an_unknown_chat_gets_404() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;

    let answer = app.get(&format!("/applications/{token}/chats/9")).await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.error(), "unknown chat");
}

#[tokio::test]
async fn chat_numbers_must_be_positive_integers() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;
    let cases = [
        "0",
        "-1",
        "abc",
        "1.5",
        "%20",
        "9223372036854775808",
        "99999999999999999999",
        // Above 2^53: a counter could not go on from it, nor a client's
        // JSON read it exactly.
        "9223372036854775807",
        "9007199254740993",
    ];

    for raw in cases {
        let put = http::send(
            app.writer
                .put(app.url(&format!("/applications/{token}/chats/{raw}"))),
        )
        .await;
        let get = app.get(&format!("/applications/{token}/chats/{raw}")).await;

        assert_eq!(put.status, 400, "PUT {raw}: {}", put.body);
        assert_eq!(get.status, 400, "GET {raw}: {}", get.body);
        assert_eq!(
            put.error(),
            "chat number must be a positive integer",
            "{raw}"
        );
    }
    let application = app.get(&format!("/applications/{token}")).await;
    assert_eq!(
        application.body["chats_count"], 0,
        "bad input stored nothing"
    );
}

#[tokio::test]
async fn chats_are_listed_in_number_order_page_by_page() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;
    for chat in [4, 1, 3, 5, 2] {
        app.put_chat(&token, chat).await;
    }

    let first = app
        .get(&format!("/applications/{token}/chats?limit=2"))
        .await;
    let second = app
        .get(&format!("/applications/{token}/chats?limit=2&after=2"))
        .await;
    let last = app
        .get(&format!("/applications/{token}/chats?limit=2&after=4"))
        .await;

    let numbers = |answer: &testkit::Answer| -> Vec<i64> {
        answer.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|chat| chat["number"].as_i64().expect("a number"))
            .collect()
    };
    assert_eq!(numbers(&first), [1, 2]);
    assert_eq!(first.body["next_after"], 2);
    assert_eq!(numbers(&second), [3, 4]);
    assert_eq!(numbers(&last), [5]);
    assert_eq!(last.body["next_after"], serde_json::Value::Null);
}

#[tokio::test]
async fn bad_page_parameters_get_400() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;

    for query in ["limit=0", "limit=1001", "limit=x", "after=-1", "after=x"] {
        let answer = app
            .get(&format!("/applications/{token}/chats?{query}"))
            .await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
    }
}

#[tokio::test]
async fn listing_the_chats_of_an_unknown_application_gets_404() {
    let app = spawn_app().await;

    let answer = app.get("/applications/nope/chats").await;

    assert_eq!(answer.status, 404);
}
