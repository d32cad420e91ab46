//! Who may talk: the list checks, pure so they are unit-tested apart.

use super::settings::AdmissionSettings;

/// Why a message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Channel,
    User,
    External,
    Bot,
    BotLoop,
    UserRate,
    ChannelRate,
    Busy,
    UserBudget,
    ChannelBudget,
    WorkspaceBudget,
}

impl Refusal {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Channel => "channel_not_allowed",
            Refusal::User => "user_not_allowed",
            Refusal::External => "external_user",
            Refusal::Bot => "bot",
            Refusal::BotLoop => "bot_loop",
            Refusal::UserRate => "user_rate",
            Refusal::ChannelRate => "channel_rate",
            Refusal::Busy => "busy",
            Refusal::UserBudget => "user_budget",
            Refusal::ChannelBudget => "channel_budget",
            Refusal::WorkspaceBudget => "workspace_budget",
        }
    }

    /// Whether the sender is told (never for bots: it would feed the loop).
    pub fn tell(self) -> bool {
        !matches!(self, Refusal::Bot | Refusal::BotLoop)
    }
}

/// Who wrote a message, where.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub team: &'a str,
    pub channel: &'a str,
    pub user: &'a str,
    pub external: bool,
    pub bot: bool,
}

/// The list checks: channel and user lists, external users, bots.
pub fn check(settings: &AdmissionSettings, sender: &Sender<'_>) -> Result<(), Refusal> {
    let workspace = settings.workspaces.iter().find(|w| w.team == sender.team);
    if let Some(w) = workspace {
        let listed = |list: &[String], item: &str| list.iter().any(|x| x == item);
        if listed(&w.deny_channels, sender.channel)
            || (!w.allow_channels.is_empty() && !listed(&w.allow_channels, sender.channel))
        {
            return Err(Refusal::Channel);
        }
        if listed(&w.deny_users, sender.user)
            || (!w.allow_users.is_empty() && !listed(&w.allow_users, sender.user))
        {
            return Err(Refusal::User);
        }
    }
    if sender.external
        && !settings.allow_external_users
        && !workspace.is_some_and(|w| w.allow_external.iter().any(|u| u == sender.user))
    {
        return Err(Refusal::External);
    }
    if sender.bot && !settings.allow_bots {
        return Err(Refusal::Bot);
    }
    Ok(())
}

/// Email: whether a sender `address` is on a mailbox's allow-list (an
/// empty list lets nobody in). Whether `address` matches an entry: a full address, or a domain (with
/// or without a leading `@`).
pub fn email_sender_allowed(address: &str, allow: &[String]) -> bool {
    let address = address.to_ascii_lowercase();
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    allow.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.contains('@') && !entry.starts_with('@') {
            entry == address
        } else {
            entry.trim_start_matches('@') == domain
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::settings::WorkspacePolicy;
    use super::*;

    fn sender<'a>(channel: &'a str, user: &'a str) -> Sender<'a> {
        Sender {
            team: "T1",
            channel,
            user,
            external: false,
            bot: false,
        }
    }

    #[test]
    fn lists_per_workspace() {
        let mut s = AdmissionSettings::default();
        s.workspaces.push(WorkspacePolicy {
            team: "T1".into(),
            allow_channels: vec!["C1".into()],
            deny_users: vec!["UBAD".into()],
            ..WorkspacePolicy::default()
        });
        assert_eq!(check(&s, &sender("C1", "U1")), Ok(()));
        assert_eq!(check(&s, &sender("C2", "U1")), Err(Refusal::Channel));
        assert_eq!(check(&s, &sender("C1", "UBAD")), Err(Refusal::User));
        let other = Sender {
            team: "T2",
            ..sender("C9", "UBAD")
        };
        assert_eq!(check(&s, &other), Ok(()), "lists are per workspace");
    }

    #[test]
    fn external_users_and_bots_are_refused_unless_allowed() {
        let mut s = AdmissionSettings::default();
        let external = Sender {
            external: true,
            ..sender("C1", "UX")
        };
        assert_eq!(check(&s, &external), Err(Refusal::External));
        s.allow_external_users = true;
        assert_eq!(check(&s, &external), Ok(()));
        let bot = Sender {
            bot: true,
            ..sender("C1", "UB")
        };
        assert_eq!(check(&s, &bot), Err(Refusal::Bot));
        s.allow_bots = true;
        assert_eq!(check(&s, &bot), Ok(()));
        assert!(!Refusal::BotLoop.tell());
    }
}
