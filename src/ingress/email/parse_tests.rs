use super::*;

const MAX: u64 = 1 << 20;

fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

#[test]
fn a_plain_mail_gives_sender_threading_headers_and_text() {
    let raw = crlf(
        "From: Ann Example <Ann@Example.com>\n\
         Reply-To: help@example.com\n\
         To: bot@example.org, other@example.org\n\
         Cc: boss@example.com\n\
         Subject:  Printer is on fire \n\
         Date: Tue, 1 Jul 2025 10:00:00 +0000\n\
         Message-ID: <m3@example.com>\n\
         In-Reply-To: <m2@example.com>\n\
         References: <m1@example.com> <m2@example.com>\n\
         \n\
         It is still burning.\n\
         \n\
         On Mon, 30 Jun 2025, Bot wrote:\n\
         > Have you tried turning it off?\n",
    );
    let m = parse(&raw, MAX).expect("parses");
    assert_eq!(m.from, "ann@example.com");
    assert_eq!(m.from_name.as_deref(), Some("Ann Example"));
    assert_eq!(m.reply_to, "help@example.com");
    assert_eq!(m.to, vec!["bot@example.org", "other@example.org"]);
    assert_eq!(m.cc, vec!["boss@example.com"]);
    assert_eq!(m.subject, "Printer is on fire");
    assert_eq!(m.message_id, "m3@example.com");
    assert_eq!(m.in_reply_to.as_deref(), Some("m2@example.com"));
    assert_eq!(m.references, vec!["m1@example.com", "m2@example.com"]);
    assert_eq!(m.date, Some(1_751_364_000));
    assert_eq!(m.text, "It is still burning.");
    assert_eq!(m.thread_root(), "m1@example.com");
}

#[test]
fn thread_root_falls_back_to_in_reply_to_then_own_id() {
    let raw = crlf("From: a@example.com\nMessage-ID: <own@x>\nIn-Reply-To: <parent@x>\n\nhi\n");
    assert_eq!(parse(&raw, MAX).expect("parses").thread_root(), "parent@x");
    let raw = crlf("From: a@example.com\nMessage-ID: <own@x>\n\nhi\n");
    assert_eq!(parse(&raw, MAX).expect("parses").thread_root(), "own@x");
}

#[test]
fn a_mail_without_message_id_gets_a_stable_synthesized_one() {
    let raw = crlf("From: a@example.com\nSubject: x\n\nhi\n");
    let a = parse(&raw, MAX).expect("parses");
    let b = parse(&raw, MAX).expect("parses");
    assert_eq!(a.message_id, b.message_id);
    assert!(a.message_id.ends_with("@switchboard.invalid"));
}

#[test]
fn html_only_mail_is_converted_to_text() {
    let raw = crlf(
        "From: a@example.com\nMessage-ID: <h@x>\nContent-Type: text/html; charset=utf-8\n\n\
         <html><body><p>Hello <b>there</b></p><p>Second</p></body></html>\n",
    );
    let m = parse(&raw, MAX).expect("parses");
    assert!(m.text.contains("Hello there"), "{:?}", m.text);
    assert!(m.text.contains("Second"), "{:?}", m.text);
    assert!(!m.text.contains('<'), "{:?}", m.text);
}

#[test]
fn attachments_are_decoded_with_name_and_type() {
    let raw = crlf(
        "From: a@example.com\nMessage-ID: <att@x>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"XX\"\n\n\
         --XX\nContent-Type: text/plain; charset=utf-8\n\nsee attached\n\
         --XX\nContent-Type: text/csv; name=\"data.csv\"\n\
         Content-Disposition: attachment; filename=\"data.csv\"\n\
         Content-Transfer-Encoding: base64\n\nYSxiCjEsMgo=\n--XX--\n",
    );
    let m = parse(&raw, MAX).expect("parses");
    assert_eq!(m.text, "see attached");
    assert_eq!(m.attachments.len(), 1);
    assert_eq!(m.attachments[0].name, "data.csv");
    assert_eq!(m.attachments[0].mimetype, "text/csv");
    assert_eq!(m.attachments[0].data, b"a,b\n1,2\n");
}

#[test]
fn broken_mime_unknown_charsets_and_oversize_are_errors_not_panics() {
    let no_boundary =
        crlf("From: a@example.com\nMessage-ID: <b@x>\nContent-Type: multipart/mixed\n\n--XX\nhi\n");
    assert!(matches!(
        parse(&no_boundary, MAX),
        Err(ParseError::BrokenMime(_))
    ));
    let charset = crlf(
        "From: a@example.com\nMessage-ID: <c@x>\nContent-Type: text/plain; charset=x-klingon\n\nqapla\n",
    );
    assert_eq!(
        parse(&charset, MAX),
        Err(ParseError::UnknownCharset("x-klingon".into()))
    );
    let big = vec![b'a'; 2048];
    assert_eq!(
        parse(&big, 1024),
        Err(ParseError::TooLarge {
            size: 2048,
            max: 1024
        })
    );
    assert_eq!(
        parse(b"", MAX).map(|_| ()).unwrap_err().label(),
        "unparseable"
    );
    let no_from = crlf("Subject: x\nMessage-ID: <n@x>\n\nhi\n");
    assert_eq!(parse(&no_from, MAX), Err(ParseError::NoSender));
}

#[test]
fn quoted_history_is_trimmed_but_never_to_nothing() {
    assert_eq!(trim_quoted("new\n\n> old\n> older\n"), "new");
    assert_eq!(
        trim_quoted("new\n-----Original Message-----\nFrom: x\nold\n"),
        "new"
    );
    assert_eq!(trim_quoted("> only quoted\n"), "> only quoted");
    assert_eq!(trim_quoted("a\nb > c\n"), "a\nb > c");
}

#[test]
fn file_names_are_made_safe() {
    assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
    assert_eq!(safe_file_name("report 2025.pdf"), "report 2025.pdf");
    assert_eq!(safe_file_name(""), "attachment");
    assert_eq!(safe_file_name("..."), "attachment");
}
