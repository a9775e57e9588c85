//! The applications: create (admin) and read.

use serde::Deserialize;
use shared::http::{BodyError, json_with_status};
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use super::input::{body_error, token};
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

/// The name of `body`, trimmed, if it is 1 to 255 characters.
fn name(body: Result<NewApplication, BodyError>) -> Result<String, HttpError> {
    let name = body.map_err(body_error)?.name;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(HttpError::BadRequest(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
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
