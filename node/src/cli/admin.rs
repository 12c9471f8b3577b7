//! `raftkv cluster status`, `raftkv member list|add|promote|remove`,
//! `raftkv leader transfer`.

use clap::{Args, Subcommand};
use reqwest::Method;

use crate::cli::client::{ClientArgs, Output, print_json, print_table};
use crate::http::MemberList;
use crate::server::{MemberStatus, NodeStatus};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: ClusterOp,
}

#[derive(Debug, Subcommand)]
pub enum ClusterOp {
    /// The status of every endpoint.
    Status,
}

#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: MemberOp,
}

#[derive(Debug, Subcommand)]
pub enum MemberOp {
    /// List the members.
    List,
    /// Add a member as a learner.
    Add {
        /// The new member's id (default: picked by the leader).
        #[arg(long)]
        id: Option<u64>,
        #[arg(long, default_value = "")]
        name: String,
        /// Where the other members reach it: http(s)://host:port.
        #[arg(long, value_parser = member_url)]
        peer_url: String,
        /// Where clients reach it: http(s)://host:port.
        #[arg(long, value_parser = member_url)]
        client_url: Option<String>,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
}

#[derive(Debug, Args)]
pub struct LeaderArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: LeaderOp,
}

#[derive(Debug, Subcommand)]
pub enum LeaderOp {
    /// Hand leadership to another voter.
    Transfer {
        #[arg(long)]
        to: u64,
    },
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub async fn run_cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let c = &args.client;
    match args.op {
        ClusterOp::Status => {
            let mut statuses = Vec::new();
            for ep in &c.endpoints {
                let s = match c.request_one(ep, "/v1/status").await {
                    Ok(a) => a.json::<NodeStatus>().map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                statuses.push((ep.clone(), s));
            }
            match c.output {
                Output::Json => {
                    let v: Vec<serde_json::Value> = statuses
                        .iter()
                        .map(|(ep, s)| match s {
                            Ok(s) => serde_json::json!({"endpoint": ep, "status": s}),
                            Err(e) => serde_json::json!({"endpoint": ep, "error": e}),
                        })
                        .collect();
                    print_json(&v)?;
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = statuses
                        .iter()
                        .map(|(ep, s)| match s {
                            Ok(s) => vec![
                                ep.clone(),
                                s.id.to_string(),
                                s.name.clone(),
                                s.role.clone(),
                                s.term.to_string(),
                                opt(s.leader_id),
                                s.commit_index.to_string(),
                                s.applied_index.to_string(),
                            ],
                            Err(e) => {
                                eprintln!("{ep}: {e}");
                                vec![ep.clone(), "-".into(), "-".into(), "unreachable".into()]
                            }
                        })
                        .collect();
                    print_table(
                        &[
                            "ENDPOINT", "ID", "NAME", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED",
                        ],
                        &rows,
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_members(
    output: Output,
    members: &[MemberStatus],
    leader: Option<u64>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&serde_json::json!({"members": members, "leader_id": leader})),
        Output::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.name.clone(),
                        if Some(m.id) == leader {
                            format!("{} (leader)", m.role)
                        } else {
                            m.role.clone()
                        },
                        m.peer_url.clone(),
                        m.client_url.clone(),
                        opt(m.match_index),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "NAME",
                    "ROLE",
                    "PEER_URL",
                    "CLIENT_URL",
                    "MATCH_INDEX",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

/// Refuses a bad member URL before anything is sent (the node checks it
/// again, the same way).
fn member_url(raw: &str) -> Result<String, crate::server::MemberUrlError> {
    crate::server::validate_member_url(raw)
}

pub async fn run_member(args: MemberArgs) -> anyhow::Result<()> {
    let c = &args.client;
    let one: MemberStatus = match args.op {
        MemberOp::List => {
            let list: MemberList = c.request(Method::GET, "/v1/members", None).await?.json()?;
            return print_members(c.output, &list.members, list.leader_id);
        }
        MemberOp::Add {
            id,
            name,
            peer_url,
            client_url,
        } => {
            let body = serde_json::json!({
                "id": id, "name": name, "peer_url": peer_url,
                "client_url": client_url.unwrap_or_default(), "learner": true,
            });
            c.request(
                Method::POST,
                "/v1/members",
                Some(serde_json::to_vec(&body)?),
            )
            .await?
            .json()?
        }
        MemberOp::Promote { id } => c
            .request(Method::POST, &format!("/v1/members/{id}/promote"), None)
            .await?
            .json()?,
        MemberOp::Remove { id } => c
            .request(Method::DELETE, &format!("/v1/members/{id}"), None)
            .await?
            .json()?,
    };
    print_members(c.output, &[one], None)
}

pub async fn run_leader(args: LeaderArgs) -> anyhow::Result<()> {
    let c = &args.client;
    match args.op {
        LeaderOp::Transfer { to } => {
            let body = serde_json::to_vec(&serde_json::json!({ "to": to }))?;
            let v: serde_json::Value = c
                .request(Method::POST, "/v1/leader/transfer", Some(body))
                .await?
                .json()?;
            match c.output {
                Output::Json => print_json(&v)?,
                Output::Table => println!("leader is now {to}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn member_add(peer_url: &str, client_url: Option<&str>) -> Result<Cli, clap::Error> {
        let mut argv = vec!["raftkv", "member", "add", "--peer-url", peer_url];
        if let Some(c) = client_url {
            argv.extend(["--client-url", c]);
        }
        Cli::try_parse_from(argv)
    }

    #[test]
    fn member_add_refuses_bad_urls_before_sending_anything() {
        for bad in crate::server::bad_member_urls() {
            assert!(
                member_add(&bad, None).is_err(),
                "peer URL {:?} accepted",
                &bad[..bad.len().min(40)]
            );
            assert!(
                member_add("http://h:2380", Some(&bad)).is_err(),
                "client URL {:?} accepted",
                &bad[..bad.len().min(40)]
            );
        }
        let cli = member_add("10.0.0.9:2380", None).unwrap();
        let Command::Member(m) = cli.command else {
            panic!("not member")
        };
        assert!(matches!(
            m.op,
            super::MemberOp::Add { ref peer_url, client_url: None, .. } if peer_url == "http://10.0.0.9:2380"
        ));
    }
}
