//! A bounded, deterministic fuzz run of the parsing path inside the normal
//! test suite (the open-ended one is `fuzz/`, for cargo-fuzz): real-looking
//! mails, mutated thousands of times (bit flips, cut, repeated and spliced
//! ranges, MIME-significant tokens), through parse, guards and the
//! conversation id. Nothing may panic.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{guard, intake, parse};

const SEEDS: &[&str] = &[
    "From: Ann <ann@example.com>\r\nTo: bot@example.org\r\nSubject: =?utf-8?B?SGVsbG8=?=\r\nMessage-ID: <m1@x>\r\nReferences: <a@x> <b@x>\r\nIn-Reply-To: <b@x>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\nHi\r\n\r\nOn Mon, Bot wrote:\r\n> old\r\n",
    "From: a@example.com\r\nMessage-ID: <att@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n--XX\r\nContent-Type: text/csv; name=\"d.csv\"\r\nContent-Disposition: attachment; filename=\"d.csv\"\r\nContent-Transfer-Encoding: base64\r\n\r\nYSxiCjEsMgo=\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: b@x\r\nSubject: inner\r\n\r\nbody\r\n--XX--\r\n",
    "From: a@example.com\r\nMessage-ID: <h@x>\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello <b>there</b><br>&amp; bye</p><script>x</script></body></html>\r\n--b1--\r\n",
    "From: \"no-reply\" <noreply@example.com>\r\nAuto-Submitted: auto-replied\r\nPrecedence: bulk\r\nList-Id: <l.example.com>\r\nReturn-Path: <>\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nout of office\r\n",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n--XX\r\n",
    b"--XX--",
    b"boundary=",
    b"Content-Type: multipart/mixed; boundary=\"",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"=?utf-8?Q?=C3=A9?=",
    b"=?x-bad?B?@@@?=",
    b"charset=",
    b"<",
    b">",
    b"\"",
    b";",
    b"=",
    b"\xff\xfe\x00",
];

fn mutate(rng: &mut SmallRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len().max(1);
    match rng.random_range(0..7) {
        0 => {
            if !input.is_empty() {
                let i = rng.random_range(0..input.len());
                input[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            let i = rng.random_range(0..=input.len());
            input.insert(i, rng.random());
        }
        2 => {
            let a = rng.random_range(0..len).min(input.len());
            let b = (a + rng.random_range(0..64)).min(input.len());
            input.drain(a..b);
        }
        3 => {
            let a = rng.random_range(0..len).min(input.len());
            let b = (a + rng.random_range(0..128)).min(input.len());
            let copy = input[a..b].to_vec();
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, copy);
        }
        4 => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, token.iter().copied());
        }
        5 => {
            let cut = rng.random_range(0..=input.len());
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => input.truncate(rng.random_range(0..=input.len())),
    }
}

#[test]
fn email_parsing_survives_thousands_of_mutated_mails() {
    const RUNS: usize = 20_000;
    let mut rng = SmallRng::seed_from_u64(0x5eed_0a11);
    let allow = vec!["example.com".to_string()];
    let mut parsed = 0;
    let mut parser_failed = 0;
    for run in 0..RUNS {
        let seed = SEEDS[run % SEEDS.len()].as_bytes();
        let other = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes();
        let mut input = seed.to_vec();
        for _ in 0..rng.random_range(1..8) {
            mutate(&mut rng, &mut input, other);
        }
        let result = parse::parse(&input, 1 << 20);
        if result == Err(parse::ParseError::ParserFailed) {
            parser_failed += 1;
        }
        if let Ok(mail) = result {
            parsed += 1;
            let _ = guard::check(&mail, "bot@example.org", &allow);
            let _ = intake::conversation_id("support", mail.thread_root());
            for a in &mail.attachments {
                let _ = parse::safe_file_name(&a.name);
            }
        }
    }
    println!("{RUNS} mutated mails, none panicked; {parsed} parsed, the rest rejected");
    assert!(parsed > 0);
    assert_eq!(parser_failed, 0, "mail-parser panicked inside (caught)");
}
