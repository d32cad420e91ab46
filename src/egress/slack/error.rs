//! How a Slack Web API call failed, classified so the caller knows whether
//! to retry now, retry after a given time, or give up.

use std::time::Duration;

use slack_morphism::errors::SlackClientError;

/// A 429 without a usable `Retry-After` waits this long.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack throttled the call (HTTP 429 or `ratelimited`): try again after
    /// `retry_after`.
    #[error("rate limited by Slack; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// Slack refused the call (`ok:false` with `code`, or an HTTP 4xx as
    /// `http_<status>`): retrying the same call gets the same answer.
    #[error("Slack refused the call: {code}")]
    Permanent { code: String },
    /// 5xx, timeout, connection error or a Slack-side `ok:false` error such
    /// as `internal_error`: retry with backoff. For chat.postMessage the post
    /// may still have happened (the answer was lost): look it up first.
    #[error("Slack call failed, may succeed later: {reason}")]
    Transient { reason: String },
}

impl SlackError {
    /// Whether trying again can help (rate limits and transient failures).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SlackError::Permanent { .. })
    }

    /// How long Slack asked us to wait, on a rate limit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The `ok:false` error code of a permanent failure.
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackError::Permanent { code } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn timeout(method: &str, after: Duration) -> Self {
        SlackError::Transient {
            reason: format!("{method}: no answer within {after:?}"),
        }
    }

    /// Classify an `ok:false` error code.
    pub fn from_code(code: &str) -> Self {
        match code {
            "ratelimited" | "rate_limited" => SlackError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER,
            },
            c if is_transient_code(c) => SlackError::Transient {
                reason: format!("Slack answered {c}"),
            },
            // Everything else, including codes we do not know: a retry of the
            // same request gets the same answer, so do not storm.
            c => SlackError::Permanent {
                code: c.to_string(),
            },
        }
    }

    /// Classify a slack-morphism client error from calling `method`.
    pub(crate) fn from_client(method: &str, error: SlackClientError) -> Self {
        match error {
            SlackClientError::RateLimitError(e) => SlackError::RateLimited {
                retry_after: e.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            },
            SlackClientError::ApiError(e) => SlackError::from_code(&e.code),
            SlackClientError::HttpError(e) => {
                let status = e.status_code.as_u16();
                if status >= 500 || status == 408 {
                    SlackError::Transient {
                        reason: format!("{method}: HTTP {status}"),
                    }
                } else {
                    SlackError::Permanent {
                        code: format!("http_{status}"),
                    }
                }
            }
            // Connection refused or reset, an answer cut short, a body that is
            // not what Slack sends: all worth another try.
            other => SlackError::Transient {
                reason: format!("{method}: {other}"),
            },
        }
    }
}

/// `ok:false` codes that mean Slack itself had trouble, not our request.
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
            | "timeout"
            | "team_added_to_org"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        for code in [
            "channel_not_found",
            "not_in_channel",
            "invalid_auth",
            "not_authed",
            "account_inactive",
            "token_revoked",
            "is_archived",
            "msg_too_long",
            "missing_scope",
            "message_not_found",
            "cant_update_message",
            "some_new_code",
        ] {
            assert_eq!(
                SlackError::from_code(code),
                SlackError::Permanent { code: code.into() }
            );
        }
        for code in ["internal_error", "fatal_error", "service_unavailable"] {
            assert!(matches!(
                SlackError::from_code(code),
                SlackError::Transient { .. }
            ));
        }
        assert_eq!(
            SlackError::from_code("ratelimited").retry_after(),
            Some(DEFAULT_RETRY_AFTER)
        );
    }
}
