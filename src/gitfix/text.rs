//! The words of a proposal: its branch, commit message and pull request. Commit messages,
//! condition messages and paths are the tenant's: each is cut, kept on one line where it sits
//! in a line, and quoted in a fenced block where it could be read as markup (an @mention or
//! an image in a pull request body would notify or load).

use super::{Change, Commit, History, NoProposal, TRAILER, commit_of};

/// The incident a proposal is for, as its record names it.
#[derive(Clone, Copy, Debug)]
pub struct Incident<'a> {
    /// The Remediation's namespace and name: the branch and the trailer are named from it.
    pub namespace: &'a str,
    pub name: &'a str,
    /// The failing object, e.g. `Kustomization team/apps`.
    pub target: &'a str,
    /// Its path in the repository, normalised.
    pub path: &'a str,
    /// The failing condition.
    pub reason: &'a str,
    pub message: &'a str,
}

/// A revert ready to propose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// fluxmedic's own branch for this incident: the key that finds the pull request again.
    pub branch: String,
    pub title: String,
    /// The revert commit's message, ending in the trailers.
    pub message: String,
    /// The pull request's description.
    pub body: String,
    pub changes: Vec<Change>,
    /// The reverted commits, oldest first.
    pub reverted: Vec<String>,
}

/// Longest condition message quoted.
const MAX_QUOTE: usize = 2000;
/// Longest commit subject quoted.
const MAX_SUBJECT: usize = 100;

/// The branch fluxmedic writes for an incident: named from its namespace and name, so two
/// namespaces' incidents can never share one in a repository they share.
pub fn branch_of(namespace: &str, name: &str) -> Result<String, NoProposal> {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 200
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with('.')
            && !s.contains("..")
            && !s.ends_with(".lock")
    };
    if !label(namespace) || !label(name) {
        return Err(NoProposal::BadName(format!("{namespace}/{name}")));
    }
    Ok(format!("fluxmedic/revert-{namespace}/{name}"))
}

/// The proposal for `culprits` (newest first, as [`super::culprits`] returns them).
pub fn propose_text(
    incident: &Incident<'_>,
    h: &History,
    culprits: &[&Commit],
    changes: Vec<Change>,
) -> Result<Proposal, NoProposal> {
    let branch = branch_of(incident.namespace, incident.name)?;
    let oldest_first: Vec<&Commit> = culprits.iter().rev().copied().collect();
    let title = match oldest_first.as_slice() {
        [one] => format!("Revert \"{}\"", inline(subject(&one.message), MAX_SUBJECT)),
        many => format!(
            "Revert {} commits that broke {}",
            many.len(),
            incident.target
        ),
    };
    let failing = commit_of(&h.failing).unwrap_or("?");
    let mut message = format!(
        "{title}\n\n{} fails at {failing}.\n{}: {}\n\n",
        incident.target,
        inline(incident.reason, MAX_SUBJECT),
        inline(incident.message, MAX_QUOTE)
    );
    for c in &oldest_first {
        message.push_str(&format!("This reverts commit {}.\n", c.sha));
    }
    message.push('\n');
    for c in &oldest_first {
        message.push_str(&format!("Reverts: {}\n", c.sha));
    }
    message.push_str(&format!(
        "{TRAILER}: {}/{}\n",
        incident.namespace, incident.name
    ));
    let body = body(incident, h, &oldest_first, &changes);
    Ok(Proposal {
        branch,
        title,
        message,
        body,
        reverted: oldest_first.iter().map(|c| c.sha.clone()).collect(),
        changes,
    })
}

fn body(incident: &Incident<'_>, h: &History, commits: &[&Commit], changes: &[Change]) -> String {
    let applied = commit_of(&h.applied).unwrap_or("?");
    let list: Vec<String> = commits
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                &c.sha[..c.sha.len().min(12)],
                inline(subject(&c.message), MAX_SUBJECT)
            )
        })
        .collect();
    let files: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                if c.content.is_some() {
                    "restore"
                } else {
                    "delete "
                },
                inline(&c.path, 300)
            )
        })
        .collect();
    format!(
        "fluxmedic proposes reverting what broke **{target}** (incident `{ns}/{name}`).\n\n\
         ### What failed\n\n{target} fails at `{failing}`, reason `{reason}`:\n\n{quote}\n\n\
         ### The commits reverted\n\n{commits}\n\n\
         ### What merging does\n\nIt restores these files to their content at `{applied}`, \
         the last revision that applied:\n\n{files}\n\n\
         Flux applies the merge; fluxmedic reconciles the source as soon as it sees the merge \
         and records the recovery on the incident. Closing this pull request without merging \
         leaves the fix to you: fluxmedic does not propose it again for this incident.\n",
        target = incident.target,
        ns = incident.namespace,
        name = incident.name,
        failing = commit_of(&h.failing).unwrap_or("?"),
        reason = inline(incident.reason, MAX_SUBJECT).replace('`', "'"),
        quote = fenced(incident.message, MAX_QUOTE),
        commits = fenced(&list.join("\n"), 8 * MAX_QUOTE),
        files = fenced(&files.join("\n"), 8 * MAX_QUOTE),
    )
}

fn subject(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// Invisible characters that reorder or hide text (bidirectional controls, zero-width
/// characters): a title or message shown to a reviewer must read as it is.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// On one line, without control or invisible characters, at most `max` characters.
fn inline(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !invisible(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// Quoted as text in a fence no line of it can close.
fn fenced(s: &str, max: usize) -> String {
    let body: String = s
        .chars()
        .filter(|c| *c == '\n' || !(c.is_control() || invisible(*c)))
        .take(max)
        .collect();
    format!("~~~text\n{}\n~~~", body.replace("~~~", "~ ~ ~"))
}
