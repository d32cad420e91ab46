//! Loop and abuse guards: which mail gets no agent reply, and why. Pure.

use super::parse::ParsedMail;

/// Why a mail gets no agent reply. Each is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `Auto-Submitted` other than `no` (auto-responders, bounces).
    AutoSubmitted,
    /// `Precedence: bulk`, `junk` or `list`.
    Precedence,
    /// `List-Id` or `List-Unsubscribe`: a mailing list.
    MailingList,
    /// A null return path, mailer-daemon or no-reply sender.
    AutomatedSender,
    /// Our own From address (a reply loop).
    OwnAddress,
    /// The sender is not on the mailbox's allow-list.
    NotAllowed,
    /// The thread got its hourly cap of replies.
    RateLimited,
}

impl Skip {
    /// A label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Skip::AutoSubmitted => "auto_submitted",
            Skip::Precedence => "precedence",
            Skip::MailingList => "mailing_list",
            Skip::AutomatedSender => "automated_sender",
            Skip::OwnAddress => "own_address",
            Skip::NotAllowed => "not_allowed",
            Skip::RateLimited => "rate_limited",
        }
    }
}

/// The first guard `mail` trips, if any. `own` is the mailbox's From
/// address; `allow` its allow-list (addresses and domains).
pub fn check(mail: &ParsedMail, own: &str, allow: &[String]) -> Result<(), Skip> {
    let auto = &mail.auto;
    if auto.auto_submitted.as_deref().is_some_and(|v| {
        // The value may carry parameters: `auto-replied; owner-email=...`.
        v.split(';').next().map(str::trim) != Some("no")
    }) {
        return Err(Skip::AutoSubmitted);
    }
    if auto
        .precedence
        .as_deref()
        .is_some_and(|p| matches!(p, "bulk" | "junk" | "list"))
    {
        return Err(Skip::Precedence);
    }
    if auto.list_id || auto.list_unsubscribe {
        return Err(Skip::MailingList);
    }
    if auto.null_return_path || is_automated_address(&mail.from) {
        return Err(Skip::AutomatedSender);
    }
    if mail.from.eq_ignore_ascii_case(own) || mail.reply_to.eq_ignore_ascii_case(own) {
        return Err(Skip::OwnAddress);
    }
    if !allowed(&mail.from, allow) {
        return Err(Skip::NotAllowed);
    }
    Ok(())
}

/// mailer-daemon, postmaster and the no-reply family.
fn is_automated_address(address: &str) -> bool {
    let local = address
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let squashed: String = local
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    local == "mailer-daemon"
        || local == "postmaster"
        || squashed.starts_with("noreply")
        || squashed.starts_with("donotreply")
}

/// The mailbox's sender allow-list: the same policy module as Slack's
/// admission lists.
pub use crate::admission::email_sender_allowed as allowed;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::email::parse::parse;

    fn mail(headers: &str) -> ParsedMail {
        let raw = format!(
            "From: Ann <ann@example.com>\r\nTo: bot@example.org\r\nSubject: hi\r\n\
             Message-ID: <m1@example.com>\r\n{headers}\r\nhello\r\n"
        );
        parse(raw.as_bytes(), 1 << 20).expect("parses")
    }

    fn allow() -> Vec<String> {
        vec!["example.com".into()]
    }

    #[test]
    fn an_ordinary_mail_from_an_allowed_domain_passes() {
        assert_eq!(check(&mail(""), "bot@example.org", &allow()), Ok(()));
        assert_eq!(
            check(&mail("Auto-Submitted: no\r\n"), "bot@example.org", &allow()),
            Ok(())
        );
    }

    #[test]
    fn automated_mail_is_skipped_with_its_reason() {
        let cases = [
            ("Auto-Submitted: auto-replied\r\n", Skip::AutoSubmitted),
            (
                "Auto-Submitted: auto-generated; x=y\r\n",
                Skip::AutoSubmitted,
            ),
            ("Precedence: bulk\r\n", Skip::Precedence),
            ("Precedence: list\r\n", Skip::Precedence),
            ("List-Id: <news.example.com>\r\n", Skip::MailingList),
            (
                "List-Unsubscribe: <mailto:u@example.com>\r\n",
                Skip::MailingList,
            ),
            ("Return-Path: <>\r\n", Skip::AutomatedSender),
        ];
        for (headers, skip) in cases {
            assert_eq!(
                check(&mail(headers), "bot@example.org", &allow()),
                Err(skip),
                "{headers}"
            );
        }
    }

    #[test]
    fn no_reply_and_daemon_senders_and_our_own_address_are_skipped() {
        for from in [
            "no-reply@example.com",
            "NoReply@example.com",
            "do_not_reply@example.com",
            "mailer-daemon@example.com",
        ] {
            let mut m = mail("");
            m.from = from.to_ascii_lowercase();
            assert_eq!(
                check(&m, "bot@example.org", &allow()),
                Err(Skip::AutomatedSender),
                "{from}"
            );
        }
        let mut m = mail("");
        m.from = "bot@example.org".into();
        assert_eq!(
            check(&m, "bot@example.org", &["example.org".into()]),
            Err(Skip::OwnAddress)
        );
    }

    #[test]
    fn the_allow_list_takes_addresses_and_domains_and_defaults_to_nobody() {
        assert!(allowed("ann@example.com", &["example.com".into()]));
        assert!(allowed("ann@example.com", &["@example.com".into()]));
        assert!(allowed("ann@example.com", &["Ann@Example.com".into()]));
        assert!(!allowed("bob@example.com", &["ann@example.com".into()]));
        assert!(!allowed("ann@evil-example.com", &["example.com".into()]));
        assert!(!allowed("ann@example.com", &[]));
        assert_eq!(
            check(&mail(""), "bot@example.org", &[]),
            Err(Skip::NotAllowed)
        );
    }
}
