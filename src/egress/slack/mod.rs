//! The Slack side of egress: a Web API client with classified errors
//! ([`SlackApi`], [`SlackError`]), the conversion of the agent's Markdown to
//! Slack mrkdwn ([`markdown_to_mrkdwn`]) and the splitting of long text into
//! messages within Slack's limits ([`split_message`]).

pub mod client;
pub mod deliver;
pub mod error;
pub mod mrkdwn;
pub mod split;

pub use client::{
    DEFAULT_TIMEOUT, PostMessage, Posted, REPLY_EVENT_TYPE, SlackApi, SlackSetupError,
    ThreadMessage, install_crypto_provider,
};
pub use error::SlackError;
pub use mrkdwn::markdown_to_mrkdwn;
pub use split::{DEFAULT_LIMIT, split_message};

/// The agent's Markdown as the Slack messages to send: converted to mrkdwn,
/// then split within `limit` characters (see [`split_message`]).
pub fn format_reply(markdown: &str, limit: usize) -> Vec<String> {
    split_message(&markdown_to_mrkdwn(markdown), limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reply_is_converted_then_split_with_code_blocks_whole() {
        let code = format!("```rust\n{}```", "let x = a < b;\n".repeat(5));
        let para = "**Note** that this is a paragraph. ".repeat(3);
        let markdown = format!("# Title\n\n{para}\n\n{code}\n\n{para}");
        let parts = format_reply(&markdown, 200);
        assert!(parts.len() > 1, "{parts:#?}");
        assert_eq!(parts[0].lines().next(), Some("*Title*"));
        let expected_code = format!("```\n{}```", "let x = a &lt; b;\n".repeat(5));
        assert!(
            parts.iter().any(|p| p.contains(&expected_code)),
            "{parts:#?}"
        );
        assert!(parts.iter().all(|p| !p.contains("**")));
    }
}
