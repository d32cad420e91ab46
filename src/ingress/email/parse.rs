//! Raw RFC 5322 bytes to what the gateway needs of a mail: who, threading
//! headers, the text for the agent (HTML converted when there is no plain
//! part, quoted history trimmed), attachments, and the headers the loop
//! guards read. Pure: no I/O, never panics on any input (fuzzed).

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

/// A mail, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMail {
    /// The sender's address, lower-cased.
    pub from: String,
    pub from_name: Option<String>,
    /// Where replies go: Reply-To when present, else the sender.
    pub reply_to: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    /// Message-ID without angle brackets (synthesized from a digest of the
    /// raw bytes when the mail has none, so a re-fetch gets the same id).
    pub message_id: String,
    pub in_reply_to: Option<String>,
    /// The References chain, oldest first, without angle brackets.
    pub references: Vec<String>,
    /// The Date header, seconds since the epoch.
    pub date: Option<i64>,
    /// The new text of the mail (quoted history trimmed).
    pub text: String,
    pub attachments: Vec<Attachment>,
    /// Headers the loop guards read.
    pub auto: AutoHeaders,
}

/// Headers that mark automated or bulk mail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoHeaders {
    pub auto_submitted: Option<String>,
    pub precedence: Option<String>,
    pub list_id: bool,
    pub list_unsubscribe: bool,
    /// `Return-Path: <>` (a bounce).
    pub null_return_path: bool,
}

/// One attachment, with its decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub mimetype: String,
    pub data: Vec<u8>,
}

/// Why a mail cannot be handled: it is dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a mail message (no headers could be parsed)")]
    Unparseable,
    #[error("no sender address (From)")]
    NoSender,
    #[error("broken MIME: {0}")]
    BrokenMime(String),
    #[error("unknown charset {0:?}")]
    UnknownCharset(String),
    #[error("broken MIME: the parser gave up on this structure")]
    ParserFailed,
    #[error("message of {size} bytes is larger than the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
}

impl ParseError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::Unparseable => "unparseable",
            ParseError::NoSender => "no_sender",
            ParseError::BrokenMime(_) => "broken_mime",
            ParseError::UnknownCharset(_) => "unknown_charset",
            ParseError::TooLarge { .. } => "too_large",
            ParseError::ParserFailed => "parser_failed",
        }
    }
}

impl ParsedMail {
    /// The thread's root: first References id, else In-Reply-To, else the
    /// mail's own Message-ID.
    pub fn thread_root(&self) -> &str {
        self.references
            .first()
            .or(self.in_reply_to.as_ref())
            .unwrap_or(&self.message_id)
    }
}

/// Parse `raw`, refusing messages over `max_bytes`.
pub fn parse(raw: &[u8], max_bytes: u64) -> Result<ParsedMail, ParseError> {
    let size = raw.len() as u64;
    if size > max_bytes {
        return Err(ParseError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    // mail-parser has internal consistency checks that could panic on odd
    // structures; a mail must never take its watcher down with it.
    let message = std::panic::catch_unwind(|| MessageParser::default().parse(raw))
        .map_err(|_| ParseError::ParserFailed)?
        .ok_or(ParseError::Unparseable)?;
    if message.headers().is_empty() {
        return Err(ParseError::Unparseable);
    }
    check_mime(&message)?;
    let (from, from_name) = first_address(message.from()).ok_or(ParseError::NoSender)?;
    let reply_to = first_address(message.reply_to())
        .map(|(a, _)| a)
        .unwrap_or_else(|| from.clone());
    let message_id = match message.message_id() {
        Some(id) if !id.trim().is_empty() => strip_brackets(id),
        _ => format!("{}@switchboard.invalid", hex::encode(Sha256::digest(raw))),
    };
    Ok(ParsedMail {
        from,
        from_name,
        reply_to,
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        subject: message.subject().unwrap_or_default().trim().to_string(),
        message_id,
        in_reply_to: ids(message.in_reply_to()).into_iter().next_back(),
        references: ids(message.references()),
        date: message.date().map(|d| d.to_timestamp()),
        text: trim_quoted(&body_text(&message)),
        attachments: attachments(&message),
        auto: auto_headers(&message),
    })
}

/// Reject what mail-parser accepted only by guessing.
fn check_mime(message: &Message<'_>) -> Result<(), ParseError> {
    for part in &message.parts {
        if part.is_encoding_problem {
            return Err(ParseError::BrokenMime(
                "a part's transfer encoding cannot be decoded".into(),
            ));
        }
        let Some(ct) = part.content_type() else {
            continue;
        };
        if ct.c_type.eq_ignore_ascii_case("multipart") && ct.attribute("boundary").is_none() {
            return Err(ParseError::BrokenMime(
                "multipart part without a boundary".into(),
            ));
        }
        if matches!(part.body, PartType::Text(_) | PartType::Html(_))
            && let Some(charset) = ct.attribute("charset")
            && !known_charset(charset)
        {
            return Err(ParseError::UnknownCharset(truncate(charset, 64)));
        }
    }
    Ok(())
}

fn known_charset(charset: &str) -> bool {
    let c = charset.trim().to_ascii_lowercase();
    matches!(
        c.as_str(),
        "utf8" | "utf-8" | "us-ascii" | "ascii" | "unicode-1-1-utf-8"
    ) || charset_decoder(c.as_bytes()).is_some()
}

fn first_address(address: Option<&Address<'_>>) -> Option<(String, Option<String>)> {
    let addr = address?.first()?;
    let email = addr.address()?.trim().to_ascii_lowercase();
    if !email.contains('@') {
        return None;
    }
    let name = addr
        .name()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from);
    Some((email, name))
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address())
                .map(|a| a.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

/// Message ids of a header (one id or a list), without angle brackets.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![strip_brackets(id)],
        HeaderValue::TextList(list) => list.iter().map(|id| strip_brackets(id)).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|id| !id.is_empty())
    .collect()
}

fn strip_brackets(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_string()
}

/// The plain-text body; the HTML body as text when there is no plain part
/// (mail-parser converts it).
fn body_text(message: &Message<'_>) -> String {
    let mut out = String::new();
    for i in 0..message.text_body_count() {
        if let Some(text) = message.body_text(i) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&text);
        }
    }
    out.replace("\r\n", "\n")
}

/// Drop quoted history: `>` lines, and everything from an attribution
/// line ("On ... wrote:") or an "Original Message" separator on.
pub fn trim_quoted(text: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let lower = t.to_ascii_lowercase();
        let attribution = (lower.starts_with("on ") && lower.ends_with("wrote:"))
            || lower.starts_with("-----original message-----")
            || (t.len() >= 20 && t.chars().all(|c| c == '_'));
        if attribution {
            break;
        }
        if t.starts_with('>') {
            continue;
        }
        kept.push(line.trim_end());
    }
    while kept.last().is_some_and(|l| l.is_empty()) {
        kept.pop();
    }
    let trimmed = kept.join("\n").trim().to_string();
    if trimmed.is_empty() {
        // All of it was quoted: give the agent the whole text rather than nothing.
        text.trim().to_string()
    } else {
        trimmed
    }
}

fn attachments(message: &Message<'_>) -> Vec<Attachment> {
    message
        .attachments()
        .enumerate()
        .map(|(i, part)| {
            let mimetype = part
                .content_type()
                .map(|ct| match &ct.c_subtype {
                    Some(sub) => format!("{}/{}", ct.c_type, sub),
                    None => ct.c_type.to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name = part
                .attachment_name()
                .map(String::from)
                .unwrap_or_else(|| format!("attachment-{}", i + 1));
            let data = match &part.body {
                PartType::Message(m) => m.raw_message.to_vec(),
                _ => part.contents().to_vec(),
            };
            Attachment {
                name,
                mimetype: mimetype.to_ascii_lowercase(),
                data,
            }
        })
        .collect()
}

fn auto_headers(message: &Message<'_>) -> AutoHeaders {
    let text = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    AutoHeaders {
        auto_submitted: text("Auto-Submitted"),
        precedence: text("Precedence"),
        list_id: message.header_raw("List-Id").is_some(),
        list_unsubscribe: message.header_raw("List-Unsubscribe").is_some(),
        null_return_path: text("Return-Path").is_some_and(|v| v == "<>"),
    }
}

/// A file name safe to create in a folder of our own.
pub fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "attachment".into()
    } else {
        truncate(&cleaned, 100)
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
