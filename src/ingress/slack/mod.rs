//! Slack ingress: the pure, transport-independent parts.
//!
//! A request from Slack goes through three steps here, none of which does
//! I/O, so the Events API handler and the Socket Mode client share them:
//! 1. [`verify`]: the `v0` signature over the raw body and the request
//!    timestamp (Events API only; Socket Mode is authenticated by its socket).
//! 2. [`event`]: the verified body becomes a [`Decision`]: answer a URL
//!    verification, ignore the event (with a reason label), or a
//!    [`Candidate`] message with its conversation, destination and dedupe keys.
//! 3. The caller dedupes and enqueues the candidate (in Redis, elsewhere).
//!
//! [`settings`] holds the `[slack]` fields these steps read.
//!
//! Two transports feed [`SlackIntake`]: [`http`] (the Events API endpoint)
//! and [`socket`] (Socket Mode websockets).

pub mod event;
pub mod http;
pub mod intake;
mod payload;
pub mod settings;
pub mod socket;
pub mod verify;

#[cfg(test)]
mod event_tests;

pub use event::{
    Candidate, CandidateKind, Decision, EventError, IgnoreReason, decide, decide_value,
};
pub use intake::{IntakeError, IntakeOutcome, SlackIntake};
pub use settings::{DmConversation, InvalidSetting, SlackIngressSettings};
pub use verify::{SignatureVerifier, VerifierInitError, VerifyError};
