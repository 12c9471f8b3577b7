//! `raftkv kv put|get|del|list`.

use clap::{Args, Subcommand};
use reqwest::Method;

use crate::cli::client::{ClientArgs, Output, encode_key, print_json, print_table};
use crate::http::ListAnswer;

#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub op: KvOp,
}

#[derive(Debug, Subcommand)]
pub enum KvOp {
    /// Write a value.
    Put { key: String, value: String },
    /// Read a value.
    Get {
        key: String,
        /// Read locally from the node asked (possibly stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key.
    Del { key: String },
    /// List keys with a prefix.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        serializable: bool,
    },
}

fn query_escape(s: &str) -> String {
    encode_key(s).replace('/', "%2F")
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let c = &args.client;
    match args.op {
        KvOp::Put { key, value } => {
            let a = c
                .request(
                    Method::PUT,
                    &format!("/v1/kv/{}", encode_key(&key)),
                    Some(value.into_bytes()),
                )
                .await?;
            let v: serde_json::Value = a.json()?;
            match c.output {
                Output::Json => print_json(&v)?,
                Output::Table => println!("OK (revision {})", v["revision"]),
            }
        }
        KvOp::Get { key, serializable } => {
            let q = if serializable {
                "?consistency=serializable"
            } else {
                ""
            };
            let a = c
                .request(
                    Method::GET,
                    &format!("/v1/kv/{}{q}", encode_key(&key)),
                    None,
                )
                .await?;
            a.ok()?;
            let header = |n: &str| {
                a.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let value = String::from_utf8_lossy(&a.body).into_owned();
            match c.output {
                Output::Json => print_json(&serde_json::json!({
                    "key": key,
                    "value": value,
                    "create_revision": header("x-raftkv-create-revision"),
                    "mod_revision": header("x-raftkv-mod-revision"),
                    "version": header("x-raftkv-version"),
                }))?,
                Output::Table => println!("{value}"),
            }
        }
        KvOp::Del { key } => {
            let a = c
                .request(
                    Method::DELETE,
                    &format!("/v1/kv/{}", encode_key(&key)),
                    None,
                )
                .await?;
            let v: serde_json::Value = a.json()?;
            match c.output {
                Output::Json => print_json(&v)?,
                Output::Table => println!("deleted {} (revision {})", v["deleted"], v["revision"]),
            }
        }
        KvOp::List {
            prefix,
            limit,
            serializable,
        } => {
            let mut path = format!("/v1/kv?prefix={}", query_escape(&prefix));
            if let Some(l) = limit {
                path.push_str(&format!("&limit={l}"));
            }
            if serializable {
                path.push_str("&consistency=serializable");
            }
            let list: ListAnswer = c.request(Method::GET, &path, None).await?.json()?;
            match c.output {
                Output::Json => print_json(&list)?,
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .kvs
                        .iter()
                        .map(|kv| {
                            vec![
                                kv.key.clone(),
                                kv.value.clone(),
                                kv.mod_revision.to_string(),
                                kv.version.to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["KEY", "VALUE", "MOD_REVISION", "VERSION"], &rows);
                }
            }
        }
    }
    Ok(())
}
