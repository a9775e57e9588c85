//! The applications: create, list and rename (admin), and read.

use std::collections::HashMap;

use serde::Deserialize;
use shared::http::{BodyError, json_with_status};
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use super::input::{body_error, page, token};
use super::reply::answer;
use crate::error::HttpError;
use crate::store::Store;
use crate::{reads, writes};

const MAX_NAME_CHARS: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApplication {
    name: String,
}

/// The name of `body`, trimmed, if it is 1 to 255 characters and holds
/// no U+0000 (which PostgreSQL text cannot store).
fn name(body: Result<NewApplication, BodyError>) -> Result<String, HttpError> {
    let name = body.map_err(body_error)?.name;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(HttpError::BadRequest(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if name.contains('\0') {
        return Err(HttpError::BadRequest(
            "name must not contain NUL characters".into(),
        ));
    }
    Ok(name.to_owned())
}

pub(crate) async fn create_application(
    body: Result<NewApplication, BodyError>,
    store: Store,
) -> Response {
    answer(
        async {
            let name = name(body)?;
            let application = writes::create_application(store.database(), &name).await?;
            Ok(json_with_status(&application, StatusCode::CREATED))
        }
        .await,
    )
}

pub(crate) async fn get_application(token_raw: String, store: Store) -> Response {
    answer(
        async {
            let application = reads::application(store.database(), &token(&token_raw)?).await?;
            Ok(warp::reply::json(&application).into_response())
        }
        .await,
    )
}

/// `GET /applications?after=&limit=`: every application, in the order
/// they were created; `after` is the opaque `next_after` of the page
/// before.
pub(crate) async fn list_applications(query: HashMap<String, String>, store: Store) -> Response {
    answer(
        async {
            let (after, limit) = page(&query)?;
            let page = reads::applications(store.database(), after, limit).await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

/// `PATCH /applications/{token}` `{"name": ...}`: the name checked as a
/// create's is, then stored; the application, or 404.
pub(crate) async fn rename_application(
    token_raw: String,
    body: Result<NewApplication, BodyError>,
    store: Store,
) -> Response {
    answer(
        async {
            let name = name(body)?;
            let token = token(&token_raw)?;
            let application = writes::rename_application(store.database(), &token, &name).await?;
            Ok(warp::reply::json(&application).into_response())
        }
        .await,
    )
}
