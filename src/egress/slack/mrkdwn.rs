//! The agent writes Markdown; Slack renders its own "mrkdwn". This converts
//! one into the other, line by line:
//!
//! - `**bold**` / `__bold__` become `*bold*`; `*italic*` / `_italic_` become
//!   `_italic_`; `~~strike~~` becomes `~strike~`.
//! - `[text](url)` and `![alt](url)` become `<url|text>`; Slack's own control
//!   sequences (`<@U123>`, `<#C123>`, `<!here>`, `<https://...>`) pass through.
//! - Headings become a bold line; bullets (`-`, `*`, `+`) become `•` with their
//!   indentation kept; numbered lists and block quotes stay as they are.
//! - Inline code and fenced code blocks are not converted (the language tag
//!   after the opening fence is dropped, Slack ignores it).
//! - `&`, `<` and `>` are escaped everywhere, code included: that is Slack's
//!   wire encoding, which its clients decode again, not a conversion.
//!
//! A fence left open at the end (streamed text cut mid-block) is closed.

/// Convert the agent's Markdown to Slack mrkdwn.
pub fn markdown_to_mrkdwn(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 8);
    let mut fence: Option<Fence> = None;
    for (index, line) in markdown.split('\n').enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        match &fence {
            Some(open) if open.closes(line) => {
                out.push_str("```");
                fence = None;
            }
            Some(open) => escape_into(open.strip_indent(line), &mut out),
            None => match Fence::opens(line) {
                Some(open) => {
                    out.push_str("```");
                    fence = Some(open);
                }
                None => convert_line(line, &mut out),
            },
        }
    }
    if fence.is_some() {
        out.push_str("\n```");
    }
    out
}

/// An open fenced code block: its fence character, length and indentation.
struct Fence {
    marker: char,
    len: usize,
    indent: usize,
}

impl Fence {
    /// The fence this line opens, if it opens one (```` ```lang ```` or `~~~`).
    fn opens(line: &str) -> Option<Fence> {
        let trimmed = line.trim_start_matches(' ');
        let indent = line.len() - trimmed.len();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = trimmed.chars().take_while(|c| *c == marker).count();
        if indent > 3 || len < 3 {
            return None;
        }
        // A backtick fence's info string may not contain backticks (that is
        // inline code such as ```` ```x``` ````).
        if marker == '`' && trimmed[len..].contains('`') {
            return None;
        }
        Some(Fence {
            marker,
            len,
            indent,
        })
    }

    fn closes(&self, line: &str) -> bool {
        let trimmed = line.trim_start_matches(' ');
        let run = trimmed.chars().take_while(|c| *c == self.marker).count();
        line.len() - trimmed.len() <= 3 && run >= self.len && trimmed[run..].trim().is_empty()
    }

    /// A content line less (up to) the fence's own indentation.
    fn strip_indent<'a>(&self, line: &'a str) -> &'a str {
        let spaces = line.chars().take(self.indent).take_while(|c| *c == ' ');
        &line[spaces.count()..]
    }
}

/// Convert one line outside code blocks.
fn convert_line(line: &str, out: &mut String) {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    if let Some(text) = heading(trimmed) {
        out.push('*');
        inline_into(&text.replace("**", "").replace("__", ""), out);
        out.push('*');
    } else if is_rule(trimmed) {
        out.push_str("──────────");
    } else if let Some(rest) = trimmed.strip_prefix('>') {
        // Block quote: keep the marker (Slack quotes the same way), convert
        // what it quotes.
        out.push_str(indent);
        out.push('>');
        if let Some(rest) = rest.strip_prefix(' ') {
            out.push(' ');
            convert_line(rest, out);
        } else {
            convert_line(rest, out);
        }
    } else if let Some(item) = bullet(trimmed) {
        out.push_str(indent);
        out.push_str("• ");
        if let Some(rest) = item.strip_prefix("[ ] ") {
            out.push_str("☐ ");
            inline_into(rest, out);
        } else if let Some(rest) = item
            .strip_prefix("[x] ")
            .or_else(|| item.strip_prefix("[X] "))
        {
            out.push_str("☑ ");
            inline_into(rest, out);
        } else {
            inline_into(item, out);
        }
    } else if let Some((number, item)) = numbered(trimmed) {
        out.push_str(indent);
        out.push_str(number);
        inline_into(item, out);
    } else {
        out.push_str(indent);
        inline_into(trimmed, out);
    }
}

/// `# Title ##` -> `Title`.
fn heading(line: &str) -> Option<String> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None;
    }
    let text = rest.trim();
    // An optional closing run of `#`s (preceded by a space) is not text.
    let text = match text.trim_end_matches('#') {
        t if t.len() < text.len() && (t.is_empty() || t.ends_with(' ')) => t.trim_end(),
        _ => text,
    };
    Some(text.to_string())
}

/// `---`, `***`, `___` (three or more, spaces allowed between).
fn is_rule(line: &str) -> bool {
    let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(first) = compact.chars().next() else {
        return false;
    };
    matches!(first, '-' | '*' | '_') && compact.len() >= 3 && compact.chars().all(|c| c == first)
}

/// `- item`, `* item`, `+ item` -> `item`.
fn bullet(line: &str) -> Option<&str> {
    let mut chars = line.chars();
    let marker = chars.next()?;
    let space = chars.next()?;
    (matches!(marker, '-' | '*' | '+') && (space == ' ' || space == '\t'))
        .then(|| line[2..].trim_start())
}

/// `12. item` or `12) item` -> (`12. `, `item`).
fn numbered(line: &str) -> Option<(&str, &str)> {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let rest = &line[digits..];
    let after = rest
        .strip_prefix(". ")
        .or_else(|| rest.strip_prefix(") "))?;
    Some((&line[..digits + 2], after))
}

/// Escape the three characters Slack requires escaped.
fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        escape_char(c, out);
    }
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// Convert inline Markdown (emphasis, links, code spans) in `text`.
fn inline_into(text: &str, out: &mut String) {
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        let consumed = match c {
            '\\' => backslash_escape(text, i, out),
            '`' => code_span(text, i, out),
            '!' if text[i + 1..].starts_with('[') => {
                link(text, i + 1, out).map(|n| n + 1).or_else(|| {
                    out.push('!');
                    Some(1)
                })
            }
            '[' => link(text, i, out),
            '<' => slack_control(text, i, out),
            'h' => bare_url(text, i, out),
            '*' | '_' | '~' => emphasis(text, i, out),
            _ => None,
        };
        match consumed {
            Some(n) => i += n,
            None => {
                escape_char(c, out);
                i += c.len_utf8();
            }
        }
    }
}

/// `\*` -> `*`: a Markdown escape of punctuation.
fn backslash_escape(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let next = text[i + 1..]
        .chars()
        .next()
        .filter(char::is_ascii_punctuation)?;
    escape_char(next, out);
    Some(1 + next.len_utf8())
}

/// A code span: kept as it is (escaped for the wire), through its closing run.
fn code_span(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let run = text[i..].chars().take_while(|c| *c == '`').count();
    let body_start = i + run;
    let mut search = body_start;
    loop {
        let found = search + text[search..].find('`')?;
        let close = text[found..].chars().take_while(|c| *c == '`').count();
        if close == run {
            out.push_str(&text[i..body_start]);
            escape_into(&text[body_start..found], out);
            out.push_str(&text[found..found + close]);
            return Some(found + close - i);
        }
        search = found + close;
    }
}

/// `[text](url "title")` -> `<url|text>`.
fn link(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let label_end = i + matching(&text[i..], '[', ']')?;
    let rest = &text[label_end + 1..];
    if !rest.starts_with('(') {
        return None;
    }
    let target_len = matching(rest, '(', ')')?;
    let target = rest[1..target_len].trim();
    let url = target.split_whitespace().next()?;
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    let label = &text[i + 1..label_end];
    out.push('<');
    for c in url.chars() {
        match c {
            '|' => out.push_str("%7C"),
            c => escape_char(c, out),
        }
    }
    if !label.is_empty() && label != url {
        out.push('|');
        inline_into(label, out);
    }
    out.push('>');
    Some(label_end + 1 + target_len + 1 - i)
}

/// The offset of the bracket closing the one `s` starts with, nesting counted.
fn matching(s: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    let mut escaped = false;
    for (at, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(at);
            }
        }
    }
    None
}

/// Slack's own `<...>` sequences (mentions, channels, specials, autolinks)
/// pass through; any other `<` is escaped by the caller.
fn slack_control(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let rest = &text[i + 1..];
    let end = rest.find('>')?;
    let inner = &rest[..end];
    let known = ["@", "#", "!", "http://", "https://", "mailto:"]
        .iter()
        .any(|p| inner.starts_with(p));
    if !known || inner.len() < 2 || inner.contains(['<', ' ', '\n']) {
        return None;
    }
    out.push('<');
    out.push_str(inner);
    out.push('>');
    Some(end + 2)
}

/// A bare `http(s)://` URL, kept whole (Slack links it): no emphasis inside,
/// trailing sentence punctuation left out.
fn bare_url(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let rest = &text[i..];
    let starts_word = !text[..i]
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric);
    if !starts_word || !(rest.starts_with("http://") || rest.starts_with("https://")) {
        return None;
    }
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let url = rest[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '"', '\'']);
    escape_into(url, out);
    Some(url.len())
}

/// A run of `*`, `_` or `~` that opens emphasis closed later on the line.
fn emphasis(text: &str, i: usize, out: &mut String) -> Option<usize> {
    let marker = text[i..].chars().next()?;
    let run = text[i..].chars().take_while(|c| *c == marker).count();
    let valid = match marker {
        '~' => run <= 2,
        _ => run <= 3,
    };
    let body_start = i + run;
    let next = text[body_start..].chars().next()?;
    let before = text[..i].chars().next_back();
    if !valid
        || next.is_whitespace()
        || (marker == '_' && before.is_some_and(char::is_alphanumeric))
    {
        return None;
    }
    let close = closing_run(text, body_start, marker, run)?;
    let body = &text[body_start..close];
    let (open_tag, close_tag) = match (marker, run) {
        ('~', _) => ("~", "~"),
        (_, 1) => ("_", "_"),
        (_, 2) => ("*", "*"),
        _ => ("*_", "_*"),
    };
    out.push_str(open_tag);
    inline_into(body, out);
    out.push_str(close_tag);
    Some(close + run - i)
}

/// Where a run of exactly `run` `marker`s closes the emphasis opened before
/// `from`: preceded by a non-space, and (for `_`) not inside a word.
fn closing_run(text: &str, from: usize, marker: char, run: usize) -> Option<usize> {
    let mut at = from;
    while at < text.len() {
        let c = text[at..].chars().next()?;
        if c == '`' {
            // Skip a code span: emphasis does not close inside it.
            let mut sink = String::new();
            at += code_span(text, at, &mut sink).unwrap_or(1);
            continue;
        }
        if c == '\\' {
            at += 1 + text[at + 1..].chars().next().map_or(0, char::len_utf8);
            continue;
        }
        if c != marker {
            at += c.len_utf8();
            continue;
        }
        let len = text[at..].chars().take_while(|x| *x == marker).count();
        let before = text[..at].chars().next_back();
        let after = text[at + len..].chars().next();
        let closes = len == run
            && at > from
            && before.is_some_and(|b| !b.is_whitespace())
            && !(marker == '_' && after.is_some_and(char::is_alphanumeric));
        if closes {
            return Some(at);
        }
        at += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::markdown_to_mrkdwn;

    #[test]
    fn converts_a_table_of_markdown_cases() {
        let cases: &[(&str, &str)] = &[
            // emphasis
            ("**bold**", "*bold*"),
            ("__bold__", "*bold*"),
            ("*italic*", "_italic_"),
            ("_italic_", "_italic_"),
            ("***both***", "*_both_*"),
            ("~~gone~~", "~gone~"),
            ("a **bold** and *it* word", "a *bold* and _it_ word"),
            ("**bold with _inner_ italic**", "*bold with _inner_ italic*"),
            ("snake_case_name stays", "snake_case_name stays"),
            ("2 * 3 * 4", "2 * 3 * 4"),
            ("a ** b", "a ** b"),
            ("**unclosed bold", "**unclosed bold"),
            ("\\*not italic\\*", "*not italic*"),
            // links
            ("[Docs](https://x.io/a)", "<https://x.io/a|Docs>"),
            (
                "see [the **guide**](https://x.io/g \"Title\")",
                "see <https://x.io/g|the *guide*>",
            ),
            ("[https://x.io](https://x.io)", "<https://x.io>"),
            (
                "![diagram](https://x.io/d.png)",
                "<https://x.io/d.png|diagram>",
            ),
            (
                "[q](https://x.io/?a=1&b=2)",
                "<https://x.io/?a=1&amp;b=2|q>",
            ),
            ("[p](https://x.io/a|b)", "<https://x.io/a%7Cb|p>"),
            ("[not a link] (x)", "[not a link] (x)"),
            (
                "see https://x.io/_a_/b?x=1&y=2.",
                "see https://x.io/_a_/b?x=1&amp;y=2.",
            ),
            ("(at https://x.io/*p*)", "(at https://x.io/*p*)"),
            ("<https://x.io>", "<https://x.io>"),
            (
                "hi <@U123> in <#C9|general> <!here>",
                "hi <@U123> in <#C9|general> <!here>",
            ),
            // escaping
            ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
            ("Vec<String>", "Vec&lt;String&gt;"),
            // code
            ("`**not bold**`", "`**not bold**`"),
            ("`a < b`", "`a &lt; b`"),
            ("``code with ` tick``", "``code with ` tick``"),
            ("**bold `code*` still**", "*bold `code*` still*"),
            (
                "```rust\nlet x = **y**;\nif a < b {}\n```",
                "```\nlet x = **y**;\nif a &lt; b {}\n```",
            ),
            (
                "```\n# not a heading\n- not a bullet\n```",
                "```\n# not a heading\n- not a bullet\n```",
            ),
            ("~~~\ncode\n~~~", "```\ncode\n```"),
            (
                "  ```\n  indented\n    more\n  ```",
                "```\nindented\n  more\n```",
            ),
            ("```\nunclosed", "```\nunclosed\n```"),
            ("inline ```x``` here", "inline ```x``` here"),
            // headings
            ("# Title", "*Title*"),
            ("### Sub **title** ###", "*Sub title*"),
            ("###### Six", "*Six*"),
            ("####### seven", "####### seven"),
            ("#hashtag", "#hashtag"),
            ("text\n## Head\nmore", "text\n*Head*\nmore"),
            // lists
            ("- one\n- two", "• one\n• two"),
            ("* one\n+ two", "• one\n• two"),
            (
                "- top\n  - nested\n    - deeper",
                "• top\n  • nested\n    • deeper",
            ),
            ("- **bold** item", "• *bold* item"),
            ("- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done"),
            ("1. first\n2. second", "1. first\n2. second"),
            ("10) tenth *it*", "10) tenth _it_"),
            ("   3. indented", "   3. indented"),
            // quotes and rules
            ("> quoted **text**", "> quoted *text*"),
            ("> - quoted bullet", "> • quoted bullet"),
            ("---", "──────────"),
            ("* * *", "──────────"),
            // whole documents keep their blank lines
            ("para one\n\npara two", "para one\n\npara two"),
            ("line\r\nnext", "line\nnext"),
            ("", ""),
            ("héllo ✓ **wörld**", "héllo ✓ *wörld*"),
        ];
        let mut failures = Vec::new();
        for (input, expected) in cases {
            let got = markdown_to_mrkdwn(input);
            if &got != expected {
                failures.push(format!("{input:?}\n   got {got:?}\n  want {expected:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
