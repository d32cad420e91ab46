//! Split a long reply into Slack messages, each within a character limit.
//!
//! Cut points, best first: a paragraph boundary (a blank line, or either
//! side of a fenced code block), a line boundary, a line boundary inside a
//! code block that is too long for one message by itself (the part closes
//! the block with a fence line and the next part reopens it), a space, and
//! as a last resort any character. A code block that fits in one message is
//! never cut. A cut is only taken in the second half of the room a message
//! has when one exists there, so parts are not needlessly short.
//!
//! Nothing is lost or repeated: each part is a slice of the input, less the
//! whitespace at the cut, plus the fence lines that close and reopen a split
//! code block. Deterministic: the same input and limit give the same parts.

use std::ops::Range;

/// Slack renders up to about 4000 characters of `text` well; stay under it.
pub const DEFAULT_LIMIT: usize = 3500;
/// The smallest limit honoured; smaller ones are raised to it.
pub const MIN_LIMIT: usize = 64;

/// Longest opening fence repeated when a part continues a code block (the
/// language tag is dropped past it).
const MAX_REOPEN: usize = 24;

/// Split `text` into messages of at most `limit` characters (at least
/// [`MIN_LIMIT`]). Text that fits comes back as one part, trimmed; text that
/// is only whitespace gives no parts.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    pieces(text, limit)
        .into_iter()
        .map(|piece| piece.render(text))
        .collect()
}

/// One part: a range of the input, and the fences added around it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    range: Range<usize>,
    /// The opening fence line to repeat first (the part continues a block).
    reopen: Option<String>,
    /// The fence line that closes the block the part ends inside, if any.
    close: Option<String>,
}

impl Piece {
    fn render(&self, text: &str) -> String {
        let mut out = String::new();
        if let Some(fence) = &self.reopen {
            out.push_str(fence);
            out.push('\n');
        }
        out.push_str(&text[self.range.clone()]);
        if let Some(fence) = &self.close {
            out.push('\n');
            out.push_str(fence);
        }
        out
    }
}

/// A fenced code block: from the start of its opening fence line to the end
/// of its closing one (or of the text, when it is never closed).
#[derive(Debug)]
struct Block {
    range: Range<usize>,
    /// The opening fence line, trimmed (```` ```rust ````), to repeat.
    fence: String,
    /// The fence run alone (```` ``` ````), to close it.
    close: String,
    /// Where its content starts (after the opening line) and ends (before the
    /// closing line).
    content: Range<usize>,
    /// Where its last non-blank content ends: no cut after it.
    last_text: usize,
    /// Too long for one message: it may be cut inside.
    oversized: bool,
}

/// How good a cut at a position is; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Paragraph,
    Line,
    InCode,
    Space,
}

fn pieces(text: &str, limit: usize) -> Vec<Piece> {
    let limit = limit.max(MIN_LIMIT);
    let blocks = code_blocks(text, limit);
    let mut out = Vec::new();
    let mut cursor = skip_blank(text, 0, None);
    while cursor < text.len() {
        let reopen = blocks
            .iter()
            .find(|b| b.content.start <= cursor && cursor < b.range.end)
            .map(|b| b.fence.clone());
        let room = limit - reopen.as_ref().map_or(0, |f| chars(f) + 1);
        let rest = text[cursor..].trim_end();
        if chars(rest) <= room {
            out.push(Piece {
                range: cursor..cursor + rest.len(),
                close: None,
                reopen,
            });
            break;
        }
        let (cut, class) = best_cut(text, &blocks, cursor, room);
        let inside = blocks
            .iter()
            .find(|b| b.content.start < cut && cut <= b.content.end && cut < b.range.end);
        let end = match class {
            None => cut,
            Some(_) => cursor + text[cursor..cut].trim_end().len(),
        };
        out.push(Piece {
            range: cursor..end,
            close: inside.map(|b| b.close.clone()),
            reopen,
        });
        cursor = match (class, inside) {
            // A hard cut inside a code block keeps every character.
            (None, Some(_)) => cut,
            _ => skip_blank(text, cut, inside),
        };
    }
    out
}

/// The best cut after `cursor` for a part with `room` characters, and its
/// class (`None`: a hard cut inside a word, where no whitespace is trimmed).
fn best_cut(text: &str, blocks: &[Block], cursor: usize, room: usize) -> (usize, Option<Class>) {
    let window = advance(text, cursor, room);
    // A cut inside a block needs room for its closing fence line.
    let longest_close = blocks.iter().map(|b| b.close.len() + 1).max().unwrap_or(0);
    let code_window = advance(text, cursor, room.saturating_sub(longest_close).max(1));
    let half = advance(text, cursor, room / 2);
    let candidates = candidates(text, blocks, cursor, window, code_window);
    for floor in [half, cursor + 1] {
        let best = candidates
            .iter()
            .filter(|(at, _)| *at >= floor)
            .min_by_key(|(at, class)| (*class, std::cmp::Reverse(*at)));
        if let Some((at, class)) = best {
            return (*at, Some(*class));
        }
    }
    // No whitespace at all: cut at the last character that fits. Never into
    // a block from outside it; inside one, short of its closing fence.
    let first = advance(text, cursor, 1);
    match blocks
        .iter()
        .find(|b| b.range.start < window && window < b.range.end)
    {
        Some(b) if b.range.start > cursor => (b.range.start, Some(Class::Line)),
        Some(b) => {
            let at = code_window
                .max(advance(text, b.content.start, 1))
                .min(b.content.end);
            (at.max(first), None)
        }
        None => (window.max(first), None),
    }
}

/// Every possible cut in `(cursor, window]` with its class.
fn candidates(
    text: &str,
    blocks: &[Block],
    cursor: usize,
    window: usize,
    code_window: usize,
) -> Vec<(usize, Class)> {
    let mut out = Vec::new();
    let block_at = |at: usize| {
        blocks
            .iter()
            .find(|b| b.range.start < at && at < b.range.end)
    };
    // Line ends, after some text.
    let mut line_start = cursor;
    let mut seen_text = false;
    for line in text[cursor..window.min(text.len())].split_inclusive('\n') {
        let line_end = line_start + line.trim_end_matches('\n').len();
        let next_start = line_start + line.len();
        line_start = next_start;
        seen_text |= !line.trim().is_empty();
        if !line.ends_with('\n') || !seen_text {
            continue;
        }
        let class = match block_at(line_end) {
            Some(b) if b.oversized && b.content.start < line_end && next_start < b.last_text => {
                if line_end > code_window {
                    continue;
                }
                Class::InCode
            }
            Some(_) => continue,
            None => {
                let next_line = text[next_start..].split('\n').next().unwrap_or("");
                let at_block_edge = blocks
                    .iter()
                    .any(|b| b.range.end == line_end || b.range.start == next_start);
                if next_line.trim().is_empty() || at_block_edge {
                    Class::Paragraph
                } else {
                    Class::Line
                }
            }
        };
        out.push((line_end, class));
    }
    // Spaces inside lines, outside code, after some text.
    let mut seen_text = false;
    for (offset, c) in text[cursor..window].char_indices() {
        let at = cursor + offset;
        if (c == ' ' || c == '\t') && seen_text && block_at(at).is_none() {
            out.push((at, Class::Space));
        }
        seen_text |= !c.is_whitespace();
    }
    out
}

/// After a cut at `at`: skip the whitespace, up to the start of the next line
/// with text, so its indentation stays (inside a code block, only the line
/// break and blank lines).
fn skip_blank(text: &str, at: usize, block: Option<&Block>) -> usize {
    let mut pos = at;
    loop {
        let rest = &text[pos..];
        let line = rest.split('\n').next().unwrap_or("");
        if line.len() < rest.len() && line.trim().is_empty() {
            pos += line.len() + 1;
            continue;
        }
        if line.trim().is_empty() {
            return text.len();
        }
        if block.is_none() && pos == at {
            // A cut at a space mid-line: drop the spaces before the next word.
            return pos + (line.len() - line.trim_start().len());
        }
        return pos;
    }
}

/// The fenced code blocks of `text` (```` ``` ```` or `~~~`).
fn code_blocks(text: &str, limit: usize) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, char, usize)> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start_matches(' ');
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |m| trimmed.chars().take_while(|c| *c == m).count());
        let end = start + line.len();
        match &open {
            Some((from, content, fence, m, len))
                if marker == Some(*m) && run >= *len && trimmed[run..].trim().is_empty() =>
            {
                blocks.push(block(
                    text,
                    *from..start + body.len(),
                    *content..start,
                    fence,
                    limit,
                ));
                open = None;
            }
            Some(_) => {}
            None if run >= 3
                && body.len() - trimmed.len() <= 3
                && !(marker == Some('`') && trimmed[run..].contains('`')) =>
            {
                let m = marker.unwrap_or('`');
                open = Some((start, end, trimmed.trim_end().to_string(), m, run));
            }
            None => {}
        }
        start = end;
    }
    if let Some((from, content, fence, _, _)) = open {
        let end = text.trim_end().len().max(content.min(text.len()));
        blocks.push(block(text, from..end, content.min(end)..end, &fence, limit));
    }
    blocks
}

fn block(
    text: &str,
    range: Range<usize>,
    content: Range<usize>,
    fence: &str,
    limit: usize,
) -> Block {
    let marker = fence.chars().next().unwrap_or('`');
    let run = fence.chars().take_while(|c| *c == marker).count();
    let close: String = std::iter::repeat_n(marker, run).collect();
    let fence = if chars(fence) <= MAX_REOPEN {
        fence.to_string()
    } else {
        close.clone()
    };
    Block {
        oversized: chars(&text[range.clone()]) > limit,
        last_text: content.start + text[content.clone()].trim_end().len(),
        range,
        fence,
        close,
        content,
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The byte offset `n` characters after `from` (or the end of `text`).
fn advance(text: &str, from: usize, n: usize) -> usize {
    text[from..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(offset, _)| from + offset)
}

#[cfg(test)]
mod tests;
