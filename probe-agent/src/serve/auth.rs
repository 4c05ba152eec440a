//! Who may read the API, asked of the Kubernetes API the way the kubelet does: a bearer
//! token is authenticated with a TokenReview, then the user it names is authorized with a
//! SubjectAccessReview for `get` on the non-resource URL requested (`/v1/verdicts`,
//! `/metrics`, ...), which the `netprobe-reader` ClusterRole grants. Answers are cached
//! briefly, allowed and denied alike, in a bounded LRU; an API that cannot answer denies.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use lru::LruCache;

/// (token, path) pairs remembered; beyond, the least recently used is forgotten.
pub const CACHE_ENTRIES: usize = 1024;
/// One review of the Kubernetes API; past it the request is denied as unavailable.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// How requests are checked.
#[derive(Clone, Default)]
pub enum Auth {
    /// Anyone who reaches the port may read.
    #[default]
    None,
    Kube(Arc<KubeAuth>),
}

/// What the Kubernetes API said of a token and a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        user: String,
    },
    /// 401: no valid token (unknown, expired, revoked).
    Unauthenticated(String),
    /// 403: a valid token whose user may not `get` this path.
    Forbidden(String),
}

/// The Kubernetes API could not answer: the request is denied (503), never let through.
#[derive(Debug, thiserror::Error)]
#[error("cannot check the bearer token: the Kubernetes API is unavailable ({0})")]
pub struct Unavailable(String);

pub struct KubeAuth {
    client: kube::Client,
    cache: Mutex<LruCache<(String, String), (Decision, Instant)>>,
    allow_ttl: Duration,
    deny_ttl: Duration,
}

/// A TokenReview's user, passed on whole to the SubjectAccessReview.
#[derive(Clone, Debug, Default)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Option<Vec<String>>,
    pub extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

impl KubeAuth {
    pub fn new(client: kube::Client, allow_ttl: Duration, deny_ttl: Duration) -> Self {
        Self {
            client,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).expect("not zero"),
            )),
            allow_ttl,
            deny_ttl,
        }
    }

    /// Whether the bearer `token` may `get` `path`, from the cache or the Kubernetes API.
    pub async fn check(&self, token: &str, path: &str) -> Result<Decision, Unavailable> {
        let key = (token.to_string(), path.to_string());
        if let Some((decision, until)) = self.cache().get(&key)
            && Instant::now() < *until
        {
            return Ok(decision.clone());
        }
        let decision = self.review(token, path).await?;
        let ttl = match decision {
            Decision::Allowed { .. } => self.allow_ttl,
            _ => self.deny_ttl,
        };
        self.cache()
            .put(key, (decision.clone(), Instant::now() + ttl));
        Ok(decision)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<(String, String), (Decision, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn review(&self, token: &str, path: &str) -> Result<Decision, Unavailable> {
        let user = match timed(self.authenticate(token)).await? {
            Ok(user) => user,
            Err(reason) => return Ok(Decision::Unauthenticated(reason)),
        };
        Ok(match timed(self.authorize(&user, path)).await? {
            Ok(()) => Decision::Allowed { user: user.name },
            Err(reason) => Decision::Forbidden(reason),
        })
    }

    async fn authenticate(&self, token: &str) -> Result<Result<User, String>, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| format!("TokenReview failed: {err}"))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        if status.authenticated != Some(true) {
            let error = status
                .error
                .unwrap_or_else(|| "the token was not accepted".to_string());
            return Ok(Err(format!("invalid bearer token: {error}")));
        }
        Ok(Ok(User {
            name: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups,
            extra: user.extra,
        }))
    }

    async fn authorize(&self, user: &User, path: &str) -> Result<Result<(), String>, String> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".to_string()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| format!("SubjectAccessReview failed: {err}"))?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            return Ok(Ok(()));
        }
        if let Some(error) = status.evaluation_error.filter(|e| !e.is_empty()) {
            return Err(format!(
                "SubjectAccessReview could not be evaluated: {error}"
            ));
        }
        let why = status
            .reason
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        Ok(Err(format!(
            "user \"{}\" may not get {path}{why} (bind the netprobe-reader ClusterRole)",
            user.name
        )))
    }
}

async fn timed<T>(review: impl Future<Output = Result<T, String>>) -> Result<T, Unavailable> {
    match tokio::time::timeout(REVIEW_TIMEOUT, review).await {
        Ok(answer) => answer.map_err(Unavailable),
        Err(_) => Err(Unavailable(format!(
            "no answer within {}s",
            REVIEW_TIMEOUT.as_secs()
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
