//! Ways messages come in: Slack (Events API over HTTP, Socket Mode) and IMAP
//! mailboxes. Each source turns what it receives into
//! [`crate::domain::InboundMessage`]s for the queue.

pub mod email;
pub mod slack;
