//! Real mail servers for the email tests, each test with its own, on free
//! loopback ports, in a temporary directory, stopped on drop:
//!
//! - Dovecot (`dovecot -F -c <our config>`): IMAP for the watched mailbox
//!   and for reading what senders got, LMTP for delivery; a passwd-file user
//!   database, Maildir storage, its own base and state directories, plain
//!   login allowed on loopback only. No system instance is touched.
//! - Exim (`exim -C <our config> -bdf`): the SMTP server mail is sent to and
//!   the bot replies through; it delivers every local address into Dovecot
//!   over LMTP. Exim because it is Debian's default MTA and, unlike Postfix
//!   (fixed queue and `postdrop` set-gid plumbing) or OpenSMTPD (one
//!   compile-time control socket per machine, so no two instances at once),
//!   it takes its spool, log and pid paths from its config file: every test
//!   runs its own in the foreground, side by side, and can stop and restart
//!   it on the same port.
//!
//! Both run as root (as the tests and CI do): Dovecot delivers as `nobody`,
//! Exim drops to `Debian-exim`. `scripts/test.sh` installs the packages.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::helpers::*;

/// The domains the test servers consider local.
pub const DOMAINS: &[&str] = &["example.test", "evil.test"];
pub const BOT: &str = "bot@example.test";
pub const BOT_PASSWORD: &str = "bot-secret";
/// Every user gets this password (they are read through the Maildir).
const PASSWORD: &str = "pw";

/// Dovecot and Exim for one test.
pub struct MailServers {
    pub dir: tempfile::TempDir,
    pub imap_port: u16,
    pub lmtp_port: u16,
    pub smtp_port: u16,
    dovecot: Child,
    exim: Option<Child>,
}

impl MailServers {
    /// Start both with mailboxes for the bot and `users`.
    pub fn start(users: &[&str]) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the email tests run Dovecot and Exim and need root (as CI has)"
        );
        for tool in ["dovecot", "exim"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{tool} is not installed: run scripts/test.sh (it installs dovecot-imapd, \
                 dovecot-lmtpd and exim4-daemon-light)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        chmod(root, 0o755);
        for sub in ["run", "state", "mail", "exim/spool"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        chown(&root.join("mail"), 65534, 65534);
        let mut lines = format!("{BOT}:{{PLAIN}}{BOT_PASSWORD}::::::\n");
        for user in users {
            lines.push_str(&format!("{user}:{{PLAIN}}{PASSWORD}::::::\n"));
        }
        std::fs::write(root.join("users"), lines).expect("users");
        let imap_port = free_port();
        let lmtp_port = free_port();
        let smtp_port = free_port();
        std::fs::write(
            root.join("dovecot.conf"),
            dovecot_config(root, imap_port, lmtp_port),
        )
        .expect("dovecot.conf");
        std::fs::write(
            root.join("exim.conf"),
            exim_config(root, smtp_port, lmtp_port),
        )
        .expect("exim.conf");
        chown_tree(&root.join("exim"), "Debian-exim");
        let dovecot = spawn(
            Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(root.join("dovecot.conf")),
            &root.join("dovecot.out"),
        );
        let mut servers = Self {
            dir,
            imap_port,
            lmtp_port,
            smtp_port,
            dovecot,
            exim: None,
        };
        servers.wait_port(imap_port, "dovecot imap");
        servers.wait_port(lmtp_port, "dovecot lmtp");
        servers.start_smtp();
        servers
    }

    fn wait_port(&self, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {port}; logs in {}: {}",
                self.dir.path().display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Dovecot's and Exim's logs, for failure messages.
    pub fn logs(&self) -> String {
        let root = self.dir.path();
        [
            "dovecot.out",
            "dovecot.log",
            "exim/mainlog",
            "exim/paniclog",
            "exim.out",
        ]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "--- {f}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Start (or restart) Exim on its port.
    pub fn start_smtp(&mut self) {
        let root = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = spawn(
                Command::new("exim")
                    .arg("-C")
                    .arg(root.join("exim.conf"))
                    .args(["-bdf", "-q1s"]),
                &root.join("exim.out"),
            );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                if smtp_ready(self.smtp_port) {
                    self.exim = Some(child);
                    return;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The port may still be held by the previous instance's children.
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "exim did not start: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop Exim (its port refuses connections until [`Self::start_smtp`]).
    pub fn stop_smtp(&mut self) {
        if let Some(mut child) = self.exim.take() {
            for pid in descendants(child.id()) {
                signal_pid(pid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.smtp_port)).is_ok() {
            assert!(Instant::now() < deadline, "exim still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill Dovecot's IMAP processes: every client connection drops.
    /// Returns how many were killed.
    pub fn kill_imap_connections(&self) -> usize {
        let imap: Vec<u32> = descendants(self.dovecot.id())
            .into_iter()
            .filter(|&pid| comm(pid) == "imap")
            .collect();
        for &pid in &imap {
            signal_pid(pid, libc::SIGKILL);
        }
        imap.len()
    }

    /// Hand `raw` to Exim over SMTP; returns when the server accepted it
    /// (250 after DATA), as ms since the epoch.
    pub fn send(&self, from: &str, to: &str, raw: &[u8]) -> u64 {
        smtp_send(self.smtp_port, "EHLO", from, to, raw)
    }

    /// Deliver `raw` straight into Dovecot over LMTP (no SMTP server).
    pub fn deliver_lmtp(&self, from: &str, to: &str, raw: &[u8]) {
        smtp_send(self.lmtp_port, "LHLO", from, to, raw);
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user).join("Maildir")
    }

    /// Every mail in `user`'s inbox: (file name, raw bytes).
    pub fn inbox(&self, user: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir(user).join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(raw) = std::fs::read(e.path()) {
                    out.push((e.file_name().to_string_lossy().into_owned(), raw));
                }
            }
        }
        out
    }

    /// Whether the mail with `message_id` in `user`'s inbox is \Seen
    /// (Maildir keeps flags in the file name: `:2,` then `S`).
    pub fn is_seen(&self, user: &str, message_id: &str) -> Option<bool> {
        self.inbox(user)
            .into_iter()
            .find(|(_, raw)| header(raw, "Message-ID").contains(message_id))
            .map(|(name, _)| {
                name.rsplit_once(":2,")
                    .is_some_and(|(_, flags)| flags.contains('S'))
            })
    }
}

impl Drop for MailServers {
    fn drop(&mut self) {
        self.stop_smtp();
        for pid in descendants(self.dovecot.id()) {
            signal_pid(pid, libc::SIGKILL);
        }
        let _ = self.dovecot.kill();
        let _ = self.dovecot.wait();
    }
}

/// A header's raw value ("" when absent), unfolded.
pub fn header(raw: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let head = head.split("\n\n").next().unwrap_or_default();
    let mut value = None::<String>;
    for line in head.lines() {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value.unwrap_or_default()
}

/// A simple mail, CRLF line ends.
pub fn mail(from: &str, subject: &str, message_id: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\nTo: {BOT}\nSubject: {subject}\nMessage-ID: <{message_id}>\n\
         Date: Tue, 1 Jul 2025 10:00:00 +0000\nMIME-Version: 1.0\n{extra}\
         Content-Type: text/plain; charset=utf-8\n\n{body}\n"
    )
    .replace('\n', "\r\n")
    .into_bytes()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn smtp_ready(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("220")
}

/// A minimal SMTP/LMTP client: one message, one recipient.
fn smtp_send(port: u16, hello: &str, from: &str, to: &str, raw: &[u8]) -> u64 {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the mail server");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut expect = |code: &str, what: &str| {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read reply");
            assert!(
                line.starts_with(code),
                "{what}: expected {code}, got {line:?}"
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    };
    expect("220", "greeting");
    let mut command = |line: String, code: &str| {
        writer.write_all(line.as_bytes()).expect("write");
        expect(code, line.trim());
    };
    command(format!("{hello} client.test\r\n"), "250");
    command(format!("MAIL FROM:<{from}>\r\n"), "250");
    command(format!("RCPT TO:<{to}>\r\n"), "250");
    command("DATA\r\n".into(), "354");
    let mut data = Vec::with_capacity(raw.len() + 64);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    command(String::from_utf8_lossy(&data).into_owned(), "250");
    let accepted = now_ms();
    command("QUIT\r\n".into(), "221");
    accepted
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(command);
    command.spawn().expect("start a mail server")
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

fn chown_tree(path: &Path, user: &str) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {user}");
}

fn dovecot_config(root: &Path, imap: u16, lmtp: u16) -> String {
    let r = root.display();
    format!(
        r#"base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
  default_fields = uid=65534 gid=65534 home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
"#
    )
}

fn exim_config(root: &Path, smtp: u16, lmtp: u16) -> String {
    let r = root.display();
    let domains = DOMAINS.join(" : ");
    format!(
        r#"primary_hostname = mx.example.test
qualify_domain = example.test
domainlist local_domains = {domains}
spool_directory = {r}/exim/spool
log_file_path = {r}/exim/%slog
pid_file_path = {r}/exim/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
local_interfaces = <; 127.0.0.1
daemon_smtp_ports = {smtp}
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
message_size_limit = 64M
acl_smtp_rcpt = acl_rcpt
keep_environment =

begin acl
acl_rcpt:
  accept

begin routers
to_dovecot:
  driver = accept
  domains = +local_domains
  transport = dovecot_lmtp

begin transports
dovecot_lmtp:
  driver = smtp
  protocol = lmtp
  hosts = 127.0.0.1
  port = {lmtp}
  allow_localhost
  hosts_avoid_tls = *

begin retry
*  *  F,2h,1s
"#
    )
}
