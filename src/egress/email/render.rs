//! The reply's bodies: the agent's Markdown as the plain-text part, and the
//! same rendered to HTML with pulldown-cmark (CommonMark with tables and
//! strikethrough; a hand-written renderer would get nesting and escaping
//! wrong). Raw HTML in the agent's text is escaped, never passed through:
//! the agent's output is not trusted markup.

use pulldown_cmark::{Event, Options, Parser, html};

/// The HTML part for `markdown`, a complete small document.
pub fn html_body(markdown: &str) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut body = String::with_capacity(markdown.len() * 2);
    html::push_html(&mut body, events);
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{body}</body></html>\n"
    )
}

/// "Re: " once.
pub fn reply_subject(subject: &str) -> String {
    let s = subject.trim();
    if s.is_empty() {
        "Re: your message".into()
    } else if s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:")) {
        s.to_string()
    } else {
        format!("Re: {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_html_and_raw_html_is_escaped() {
        let html =
            html_body("# Title\n\nSome **bold** and `code`.\n\n- a\n- b\n\n<script>x()</script>\n");
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        assert!(html.contains("<code>code</code>"), "{html}");
        assert!(html.contains("<li>a</li>"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn subject_gets_re_once() {
        assert_eq!(reply_subject("Printer"), "Re: Printer");
        assert_eq!(reply_subject("Re: Printer"), "Re: Printer");
        assert_eq!(reply_subject("RE: Printer"), "RE: Printer");
        assert_eq!(reply_subject("  "), "Re: your message");
        assert_eq!(reply_subject("Ré"), "Re: Ré");
        assert_eq!(reply_subject("éé"), "Re: éé");
    }
}
