use super::*;

/// Redis Cluster's hash slot of a key (CRC16/XMODEM of the hash tag, mod 16384).
fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            key[open + 1..]
                .find('}')
                .filter(|&len| len > 0)
                .map(|len| &bytes[open + 1..open + 1 + len])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in tagged {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[test]
fn hash_slot_matches_redis_reference_values() {
    // Values from the Redis Cluster specification / CLUSTER KEYSLOT.
    assert_eq!(hash_slot("123456789"), 0x31c3);
    assert_eq!(
        hash_slot("{user1000}.following"),
        hash_slot("{user1000}.followers")
    );
    assert_eq!(hash_slot("foo"), 12182);
}

#[test]
fn every_scripts_keys_fall_in_one_hash_slot() {
    let keys = Keys::new("switchboard", 8);
    let dedupe = "slack:msg:T1:C1:1.2";
    let mut shards_seen = std::collections::HashSet::new();
    for i in 0..64 {
        let cid = ConversationId::new(format!("slack:T1:C{i}:1700000000.{i:06}"));
        let k = keys.for_conversation(&cid);
        shards_seen.insert(k.shard);
        let lists = [
            ("enqueue", k.enqueue_keys(&cid).to_vec()),
            ("pop_claim", k.pop_claim_keys("w1")),
            ("fail", k.turn_end_keys(&cid)),
            ("renew", k.renew_keys(&cid)),
            ("progress", k.progress_keys(&cid)),
            ("save_session", k.save_session_keys(&cid)),
            ("commit", k.commit_keys(&cid)),
            ("reclaim", k.reclaim_keys(&cid)),
            ("heartbeat", k.heartbeat_keys()),
            ("reap_worker", k.reap_worker_keys()),
            ("requeue_dead", k.requeue_dead_keys(&cid)),
            ("disown", k.disown_keys(&cid)),
            ("lead", vec![k.lead("egress")]),
            ("notice", k.notice_keys(&cid)),
            ("take_tokens", vec![k.bucket("slack:T1:chat.update")]),
        ];
        // schedule (prelude.lua) names the owner's wake list itself.
        assert_eq!(k.wake() + ":w:w1", k.wake_worker("w1"));
        // enqueue.lua and admit.lua name their other keys from the base.
        for (name, value, key) in k.named_by_enqueue(dedupe, "user:T1:U1", "2026-11-27") {
            assert_eq!([k.base(), ":", name, value].concat(), key);
            assert_eq!(hash_slot(&key), hash_slot(&k.conv(&cid)));
        }
        // pop_claim.lua names the popped conversation's keys itself.
        assert_eq!(k.conv_prefix() + cid.as_str(), k.conv(&cid));
        assert_eq!(k.inbox_prefix() + cid.as_str(), k.inbox(&cid));
        let named = [k.conv(&cid), k.inbox(&cid), k.leases()];
        let slots: std::collections::HashSet<u16> =
            named.iter().map(|key| hash_slot(key)).collect();
        assert_eq!(
            slots.len(),
            1,
            "pop_claim names keys in another slot: {named:?}"
        );
        for (script, list) in lists {
            let slots: std::collections::HashSet<u16> =
                list.iter().map(|key| hash_slot(key)).collect();
            assert_eq!(slots.len(), 1, "{script} touches several slots: {list:?}");
        }
    }
    assert!(shards_seen.len() > 1, "conversations spread over shards");
}

/// The names in every `shard_key(base, '<name>' ...)` call of a script.
fn shard_key_names(script: &str) -> Vec<&str> {
    script
        .match_indices("shard_key(")
        .filter_map(|(at, _)| {
            let call = &script[at..];
            let after_comma = call.split_once(',')?.1.trim_start();
            let name = after_comma.strip_prefix('\'')?;
            Some(&name[..name.find('\'')?])
        })
        .collect()
}

#[test]
fn enqueue_and_admit_name_their_keys_as_keys_rs_does() {
    let k = Keys::new("switchboard", 1).shard(0);
    let known: std::collections::BTreeSet<&str> = k
        .named_by_enqueue("d", "b", "day")
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let sources = [
        include_str!("lua/prelude.lua"),
        include_str!("lua/admit.lua"),
        include_str!("lua/enqueue.lua"),
    ];
    let used: std::collections::BTreeSet<&str> =
        sources.iter().flat_map(|s| shard_key_names(s)).collect();
    // Every name the scripts build is one keys.rs knows, and each of them
    // is used (the list is not stale).
    assert_eq!(used, known);
}

#[test]
fn claim_reply_is_parsed() {
    let worker = WorkerId::new("w1").expect("id");
    let msg = InboundMessage {
        conversation: ConversationId::new("c"),
        dedupe_keys: vec![],
        sender: "U1".into(),
        sender_name: None,
        text: "hi".into(),
        files: vec![],
        external_id: "1".into(),
        received_at_ms: 1,
    };
    let json = serde_json::to_string(&msg).expect("json");
    let reply: Vec<String> = [
        "claimed", "7", "2", "5-0", "w0", "1", "3", "sess", "", "5-0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([json])
    .collect();
    let claim = parse_claim(ConversationId::new("c"), &worker, 4, &reply).expect("parse");
    assert_eq!(claim.lease.epoch, 7);
    assert_eq!(claim.attempt, 2);
    assert_eq!(claim.batch, "5-0");
    assert_eq!(claim.owner.as_ref().map(|o| o.generation), Some(3));
    assert_eq!(claim.session_id.as_deref(), Some("sess"));
    assert_eq!(claim.messages.len(), 1);
    assert!(parse_claim(ConversationId::new("c"), &worker, 4, &reply[..5]).is_err());
}

#[test]
fn worker_ids_reject_separators() {
    assert!(WorkerId::new("w-1.host").is_some());
    assert!(WorkerId::new("a|b").is_none());
    assert!(WorkerId::new("").is_none());
    assert!(WorkerId::new("a b").is_none());
}
