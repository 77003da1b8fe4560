//! The management API's JSON body extractor: a body that is not valid JSON for the
//! route's request type, or is over the limit, is refused in the API's one error
//! shape (`ApiError`), so no handler repeats the rejection mapping.

use super::ApiError;
use axum::extract::{FromRequest, Request};
use axum::Json;
use serde::de::DeserializeOwned;

/// A JSON request body of type `T`, refused with an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}
