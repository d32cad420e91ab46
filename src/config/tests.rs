use super::*;

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = Settings::from_toml_str("[gateway]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n")
        .expect_err("unknown key must fail");
    let text = err.to_string();
    assert!(text.contains("listne"), "{text}");
    assert!(text.contains("gateway"), "{text}");
}

#[test]
fn bad_value_names_the_field_and_what_is_expected() {
    let err = Settings::from_toml_str("[redis]\npool_size = \"many\"\n")
        .expect_err("string for a number must fail");
    let text = err.to_string();
    assert!(text.contains("redis.pool_size"), "{text}");
    assert!(text.contains("expected"), "{text}");
}

#[test]
fn bad_duration_is_rejected() {
    let err = Settings::from_toml_str("shutdown_timeout = \"soon\"\n").expect_err("bad duration");
    assert!(err.to_string().contains("shutdown_timeout"), "{err}");
}

#[test]
fn runtime_threads_default_to_one_and_are_bounded() {
    assert_eq!(Settings::from_toml_str("").expect("defaults").threads, 1);
    assert_eq!(
        Settings::from_toml_str("threads = 0\n").expect("0").threads,
        0
    );
    let err = Settings::from_toml_str("threads = 5000\n").expect_err("too many");
    assert!(err.to_string().contains("threads"), "{err}");
}

#[test]
fn response_timeout_shorter_than_blocking_read_is_rejected() {
    let err =
        Settings::from_toml_str("[redis]\nresponse_timeout = \"1s\"\nblocking_read = \"5s\"\n")
            .expect_err("must fail");
    assert!(err.to_string().contains("redis.response_timeout"), "{err}");
}

#[test]
fn admin_off_loopback_without_token_is_rejected() {
    let err =
        Settings::from_toml_str("[admin]\nlisten = \"0.0.0.0:9090\"\n").expect_err("must fail");
    assert!(err.to_string().contains("admin.listen"), "{err}");
    assert!(err.to_string().contains("SWITCHBOARD_ADMIN_TOKEN"), "{err}");
}

#[test]
fn rendered_config_reparses_and_hides_secrets() {
    let mut settings = Settings::default();
    settings.secrets.slack_bot_token = Some(Secret::new("xoxb-hidden-value"));
    let text = settings.render_redacted();
    assert!(!text.contains("xoxb-hidden-value"));
    assert!(text.contains("SLACK_BOT_TOKEN = [redacted]"));
    assert!(text.contains("REDIS_URL = <unset>"));
    let again = Settings::from_toml_str(&text).expect("rendered config parses");
    assert_eq!(again.redis.pool_size, settings.redis.pool_size);
}

const MAILBOX: &str = r#"
[[email.mailboxes]]
name = "support"
imap_host = "HOST"
imap_port = 143
imap_tls = "plain"
imap_user = "bot@example.com"
imap_password_env = "SUPPORT_IMAP_PASSWORD"
smtp_host = "127.0.0.1"
smtp_port = 25
smtp_tls = "plain"
from_address = "bot@example.com"
"#;

#[test]
fn email_plain_tls_is_only_allowed_for_loopback_hosts() {
    let ok = Settings::from_toml_str(&MAILBOX.replace("HOST", "127.0.0.1")).expect("loopback");
    assert_eq!(ok.email.mailboxes.len(), 1);
    assert_eq!(ok.email.mailboxes[0].folder, "INBOX");
    assert!(ok.email.mailboxes[0].allow.is_empty(), "nobody by default");
    let err = Settings::from_toml_str(&MAILBOX.replace("HOST", "imap.example.com"))
        .expect_err("plain off loopback");
    assert!(
        err.to_string().contains("email.mailboxes.imap_tls"),
        "{err}"
    );
}

#[test]
fn email_mail_passwords_are_redacted_in_the_rendered_config() {
    let mut settings = Settings::from_toml_str(&MAILBOX.replace("HOST", "localhost")).expect("ok");
    settings
        .secrets
        .mail_passwords
        .insert("SUPPORT_IMAP_PASSWORD".into(), Secret::new("hunter2-imap"));
    let text = settings.render_redacted();
    assert!(!text.contains("hunter2-imap"));
    assert!(
        text.contains("SUPPORT_IMAP_PASSWORD = [redacted]"),
        "{text}"
    );
}
