//! [`TokenSource`]: an access token in memory that renews itself.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::token::{OAuthClient, Token, TokenParams};
use super::{DpopClient, Error};

/// Renew this long before expiry, so a token does not expire in flight.
const MARGIN: Duration = Duration::from_secs(30);

/// An access token that renews itself when it expires (or is about to): with its refresh
/// token when it has one, else with a new `client_credentials` request when it came from
/// that grant. For tokens kept across processes, see [`TokenCache`](super::TokenCache).
///
/// ```no_run
/// use dpop_client::http::{ClientAuth, DpopClient, OAuthClient, TokenParams, TokenSource};
///
/// # async fn demo(http: DpopClient, oauth: OAuthClient) -> Result<(), dpop_client::http::Error> {
/// let source = TokenSource::client_credentials(oauth, TokenParams::default().scope("read"));
/// for _ in 0..3 {
///     let token = source.access_token(&http).await?;
///     let request = http.reqwest().get("https://api.example.com/v1/items").build()?;
///     http.send(request, Some(&token)).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TokenSource {
    client: OAuthClient,
    params: TokenParams,
    client_credentials: bool,
    current: Mutex<Option<(Token, Option<Instant>)>>,
}

/// When `token` expires; `None` when it does not say, or (checked, not panicking) when the
/// instant is past what the clock can represent.
fn expiry(token: &Token) -> Option<Instant> {
    token.expires_in.and_then(|d| Instant::now().checked_add(d))
}

impl TokenSource {
    /// Tokens of the `client_credentials` grant, the first requested on first use.
    pub fn client_credentials(client: OAuthClient, params: TokenParams) -> TokenSource {
        TokenSource {
            client,
            params,
            client_credentials: true,
            current: Mutex::new(None),
        }
    }

    /// Starts from a token just issued (by any grant); it is refreshed with its refresh token.
    pub fn from_token(client: OAuthClient, params: TokenParams, token: Token) -> TokenSource {
        let expires = expiry(&token);
        TokenSource {
            client,
            params,
            client_credentials: false,
            current: Mutex::new(Some((token, expires))),
        }
    }

    /// The current access token, renewed first when it expires within 30 seconds.
    pub async fn access_token(&self, http: &DpopClient) -> Result<Zeroizing<String>, Error> {
        let mut current = self.current.lock().await;
        let fresh = |expires: &Option<Instant>| {
            expires.is_none_or(|at| {
                at.checked_duration_since(Instant::now())
                    .is_some_and(|left| left > MARGIN)
            })
        };
        if let Some((token, expires)) = current.as_ref()
            && fresh(expires)
        {
            return Ok(Zeroizing::new(token.access_token().to_owned()));
        }
        let refresh = current
            .as_ref()
            .and_then(|(t, _)| t.refresh_token().map(|r| Zeroizing::new(r.to_owned())));
        let token = match refresh {
            Some(refresh) => self.client.refresh(http, &refresh, &self.params).await?,
            None if self.client_credentials => {
                self.client.client_credentials(http, &self.params).await?
            }
            None => return Err(Error::SourceExpired),
        };
        let expires = expiry(&token);
        let access = Zeroizing::new(token.access_token().to_owned());
        *current = Some((token, expires));
        Ok(access)
    }
}
