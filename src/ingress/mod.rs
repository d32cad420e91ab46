//! Ways messages come in: Slack (Events API over HTTP, Socket Mode) and, later,
//! IMAP mailboxes. Each source turns what it receives into
//! [`crate::domain::InboundMessage`]s for the queue.

pub mod slack;
