//! The mail parsing path on arbitrary bytes: parse, the loop guards, the
//! thread root and the conversation id must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::ingress::email::{guard, intake, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(mail) = parse::parse(data, 1 << 20) {
        let _ = guard::check(&mail, "bot@example.org", &["example.com".to_string()]);
        let _ = intake::conversation_id("support", mail.thread_root());
        for a in &mail.attachments {
            let _ = parse::safe_file_name(&a.name);
        }
    }
});
