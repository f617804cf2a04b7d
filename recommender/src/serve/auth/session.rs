//! The login form's sessions: a random id in a cookie stands for a token kept on the server.
//!
//! Ids are 32 random bytes from `ring::rand::SystemRandom` (base64url); the table holds at
//! most [`MAX_SESSIONS`], each for [`SESSION_TTL`] (when full, the session closest to expiry
//! is dropped). The cookie is `HttpOnly; Secure; SameSite=Strict; Path=/`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use ring::rand::SecureRandom as _;

/// The session cookie's name.
pub const COOKIE: &str = "leash_session";

/// How long a session lasts (the token's own expiry still applies: each request reviews it).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// At most this many sessions at once.
pub const MAX_SESSIONS: usize = 4096;

#[cfg(test)]
use crate::kube_review::MAX_TOKEN_BYTES;
pub use crate::kube_review::Token;

/// A session id (base64url of 32 random bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    /// The cookie's value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a session cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The system's random generator failed.
    #[error("cannot draw a random session id")]
    Random,
}

struct Session {
    token: Token,
    expires: Instant,
}

/// The session table.
pub struct Sessions {
    table: Mutex<HashMap<SessionId, Session>>,
    random: ring::rand::SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            table: Mutex::default(),
            random: ring::rand::SystemRandom::new(),
        }
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Session>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session for `token`.
    pub fn create(&self, token: Token) -> Result<SessionId, Error> {
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).map_err(|_| Error::Random)?;
        let id = SessionId({
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        });
        let now = Instant::now();
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| s.expires > now);
        }
        if table.len() >= MAX_SESSIONS
            && let Some(first) = table
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            table.remove(&first);
        }
        table.insert(
            id.clone(),
            Session {
                token,
                expires: now + SESSION_TTL,
            },
        );
        Ok(id)
    }

    /// The token of session `id`, if it exists and has not expired.
    pub fn token(&self, id: &str) -> Option<Token> {
        let key = SessionId(id.to_owned());
        let mut table = self.lock();
        match table.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.token.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`; whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(&SessionId(id.to_owned())).is_some()
    }

    /// How many sessions are open (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The session id in the request's `Cookie` headers, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value opening session `id`.
pub fn set_cookie(id: &SessionId) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        id.as_str(),
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value clearing the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_hold_tokens_until_removed() {
        let sessions = Sessions::default();
        let token = Token::parse("t0k3n").expect("a token");
        let a = sessions.create(token.clone()).expect("a session");
        let b = sessions.create(token.clone()).expect("a session");
        assert_ne!(a, b, "ids are random");
        assert_eq!(a.as_str().len(), 43);
        assert_eq!(sessions.token(a.as_str()), Some(token));
        assert!(sessions.remove(a.as_str()));
        assert_eq!(sessions.token(a.as_str()), None);
        assert_eq!(sessions.token("made-up"), None);
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::default();
        let token = Token::parse("t").expect("a token");
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.create(token.clone()).expect("a session");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn tokens_are_never_shown_and_must_be_printable() {
        let token = Token::parse(" secret-value\n").expect("a token");
        assert_eq!(token.expose(), "secret-value");
        assert!(!format!("{token:?} {token}").contains("secret"));
        assert!(Token::parse("").is_none());
        assert!(Token::parse("a b").is_none());
        assert!(Token::parse(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; leash_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        assert_eq!(cookie(&HeaderMap::new()), None);
        let id = SessionId("x".into());
        assert_eq!(
            set_cookie(&id),
            "leash_session=x; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=28800"
        );
    }
}
