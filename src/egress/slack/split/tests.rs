use super::*;

/// Check every property a split must have, and return the rendered parts.
fn check(text: &str, limit: usize) -> Vec<String> {
    let pieces = pieces(text, limit);
    let limit = limit.max(MIN_LIMIT);
    let rendered: Vec<String> = pieces.iter().map(|p| p.render(text)).collect();
    for part in &rendered {
        assert!(
            chars(part) <= limit,
            "part of {} chars over {limit}: {part:?}",
            chars(part)
        );
    }
    // Nothing lost, nothing repeated: the pieces tile the input, with only
    // whitespace between them.
    let mut at = 0;
    for piece in &pieces {
        assert!(piece.range.start < piece.range.end, "empty piece {piece:?}");
        assert!(piece.range.start >= at, "overlap at {piece:?}");
        let gap = &text[at..piece.range.start];
        assert!(gap.trim().is_empty(), "lost {gap:?} before {piece:?}");
        at = piece.range.end;
    }
    assert!(
        text[at..].trim().is_empty(),
        "lost the tail {:?}",
        &text[at..]
    );
    // Every part's fences balance when the input's do.
    if fence_lines(text).is_multiple_of(2) {
        for part in &rendered {
            assert!(
                fence_lines(part).is_multiple_of(2),
                "unbalanced fences in {part:?}"
            );
        }
    }
    // A code block that fits in one message is in one message.
    for block in code_blocks(text, limit).iter().filter(|b| !b.oversized) {
        assert!(
            pieces
                .iter()
                .any(|p| p.range.start <= block.range.start && block.range.end <= p.range.end),
            "block {:?} was cut",
            &text[block.range.clone()]
        );
    }
    assert_eq!(rendered, split_message(text, limit), "not deterministic");
    rendered
}

fn fence_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            (t.starts_with("```") && !t[3..].contains('`')) || t.starts_with("~~~")
        })
        .count()
}

#[test]
fn text_that_fits_is_one_part_trimmed() {
    assert_eq!(check("  hello\n\n", 100), vec!["hello"]);
    assert!(check(" \n\n \t", 100).is_empty());
    assert!(check("", 100).is_empty());
}

#[test]
fn long_text_splits_at_paragraph_boundaries() {
    let para = "word ".repeat(12).trim_end().to_string(); // 59 chars
    let text = [para.as_str(); 4].join("\n\n");
    let parts = check(&text, 130);
    assert_eq!(
        parts,
        vec![format!("{para}\n\n{para}"), format!("{para}\n\n{para}")]
    );
}

#[test]
fn a_paragraph_too_long_splits_at_line_then_word_boundaries() {
    let lines: Vec<String> = (0..10)
        .map(|i| format!("line {i} of the paragraph"))
        .collect();
    let text = lines.join("\n");
    for part in check(&text, 70) {
        assert!(part.starts_with("line "), "{part:?}");
        assert!(part.ends_with("paragraph"), "{part:?}");
    }
    let words = "alpha beta gamma delta ".repeat(20);
    for part in check(&words, 64) {
        assert!(!part.starts_with(' ') && !part.ends_with(' '), "{part:?}");
        assert!(
            part.split(' ')
                .all(|w| ["alpha", "beta", "gamma", "delta"].contains(&w)),
            "a word was cut: {part:?}"
        );
    }
}

#[test]
fn a_word_longer_than_the_limit_is_cut_without_losing_a_character() {
    let text = "é".repeat(300);
    let parts = check(&text, 64);
    assert_eq!(parts.concat(), text);
    assert!(
        parts
            .iter()
            .all(|p| chars(p) == 64 || p == parts.last().unwrap_or(p))
    );
}

#[test]
fn a_code_block_that_fits_moves_whole_to_the_next_message() {
    let code = format!("```rust\n{}```", "let x = 1;\n".repeat(8));
    let text = format!("{}\n\n{code}\n\nafter", "intro text ".repeat(5).trim_end());
    let parts = check(&text, 120);
    assert!(parts.iter().any(|p| p.contains(&code)), "{parts:#?}");
}

#[test]
fn an_oversized_code_block_is_closed_and_reopened() {
    let body: String = (0..40).map(|i| format!("    step({i});\n")).collect();
    let text = format!("Here:\n\n```python\n{body}```\n\nDone.");
    let parts = check(&text, 200);
    assert!(parts.len() > 2, "{parts:#?}");
    for part in &parts {
        assert!(fence_lines(part).is_multiple_of(2), "{part:?}");
    }
    // Continuations reopen with the language tag and keep indentation.
    assert!(
        parts[1..]
            .iter()
            .any(|p| p.starts_with("```python\n    step(")),
        "{parts:#?}"
    );
    // Every code line is there exactly once.
    let all = parts.join("\n");
    for i in 0..40 {
        assert_eq!(all.matches(&format!("step({i});")).count(), 1, "step {i}");
    }
}

#[test]
fn an_unclosed_code_block_at_the_end_is_split_too() {
    let text = format!("```\n{}", "x = y + z\n".repeat(30));
    let parts = check(&text, 100);
    assert!(parts.len() > 1);
    assert!(
        parts[..parts.len() - 1]
            .iter()
            .all(|p| p.ends_with("\n```"))
    );
}

#[test]
fn a_code_block_line_longer_than_the_limit_is_hard_cut_inside_the_block() {
    let text = format!("```\n{}\n```", "0123456789".repeat(30));
    let parts = check(&text, 80);
    assert!(parts.len() > 3);
    let digits: String = parts
        .iter()
        .map(|p| p.trim_start_matches("```\n").trim_end_matches("\n```"))
        .collect();
    assert_eq!(digits, "0123456789".repeat(30));
}

#[test]
fn random_documents_keep_every_property() {
    for seed in [0x5eed, 7919] {
        let mut rng = Lcg(seed);
        for round in 0..500 {
            let text = random_document(&mut rng);
            let limit = [64, 80, 150, 400, 1000, DEFAULT_LIMIT][round % 6];
            check(&text, limit);
        }
    }
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn random_document(rng: &mut Lcg) -> String {
    let words = [
        "a",
        "word",
        "Slack",
        "ünïcode",
        "✓",
        "**bold**",
        "`x`",
        "longer-word-here",
    ];
    let mut out = String::new();
    for _ in 0..rng.next(12) + 1 {
        match rng.next(7) {
            0 | 1 => {
                for _ in 0..rng.next(60) + 1 {
                    out.push_str(words[rng.next(words.len())]);
                    out.push(if rng.next(8) == 0 { '\n' } else { ' ' });
                }
            }
            2 => {
                for i in 0..rng.next(8) + 1 {
                    out.push_str(&format!("{}- item {i}\n", "  ".repeat(rng.next(3))));
                }
            }
            3 => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                let open = ["```", "```rust", "~~~"][rng.next(3)];
                out.push_str(open);
                out.push('\n');
                for _ in 0..rng.next(40) {
                    out.push_str(&" ".repeat(rng.next(6)));
                    out.push_str(&"code();".repeat(rng.next(5) + 1));
                    out.push('\n');
                    if rng.next(10) == 0 {
                        out.push('\n');
                    }
                }
                out.push_str(&open[..3]);
                out.push('\n');
            }
            4 => out.push_str(&"x".repeat(rng.next(200))),
            5 => out.push_str(&" ".repeat(rng.next(4))),
            _ => {}
        }
        out.push_str(["\n\n", "\n", "\n\n\n", " "][rng.next(4)]);
    }
    if rng.next(5) == 0 {
        out.push_str("\n```\nunclosed();\n");
    }
    out
}
