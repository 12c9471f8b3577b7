//! The HTTP client behind `raftkv kv|cluster|member|leader`: tries each
//! endpoint in turn until one answers, turns JSON errors into readable
//! messages, and prints tables or JSON.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use reqwest::{Method, StatusCode};

/// Flags every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// HTTP endpoints of the cluster's nodes, comma separated.
    #[arg(
        long,
        global = true,
        env = "RAFTKV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, env = "RAFTKV_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up on a request after this long.
    #[arg(
        long,
        global = true,
        env = "RAFTKV_CLIENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,
}

/// TLS flags of the gRPC client commands, named as etcdctl's.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsClientArgs {
    /// CA bundle that the server certificates must chain to (needed for
    /// `https://` endpoints).
    #[arg(long, env = "RAFTKV_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate to present (servers with --client-cert-auth).
    #[arg(long, env = "RAFTKV_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// Private key of --cert.
    #[arg(long, env = "RAFTKV_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

impl TlsClientArgs {
    pub fn client_tls(&self) -> crate::tls::ClientTls {
        crate::tls::ClientTls {
            trusted_ca: self.cacert.clone(),
            key_pair: match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => Some(crate::tls::reload::KeyPairFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// An answer from the first endpoint that answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as JSON, or the server's error as an error.
    pub fn json<T: for<'de> serde::Deserialize<'de>>(&self) -> anyhow::Result<T> {
        self.ok()?;
        serde_json::from_slice(&self.body).context("the server's answer is not the JSON expected")
    }

    /// Fails with the server's message unless the status is a success.
    pub fn ok(&self) -> anyhow::Result<()> {
        if self.status.is_success() {
            return Ok(());
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        bail!("{} ({})", msg.trim(), self.status)
    }
}

pub fn base_url(endpoint: &str) -> String {
    let e = endpoint.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(self.timeout_ms))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("cannot build the HTTP client")
    }

    /// Sends the request to each endpoint in turn until one answers (any
    /// HTTP status counts as an answer; connection failures move on).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let client = self.client()?;
        let mut last_err = None;
        for ep in &self.endpoints {
            let url = format!("{}{}", base_url(ep), path);
            let mut req = client.request(method.clone(), &url);
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = resp.bytes().await.context("reading the answer")?;
                    return Ok(Answer {
                        status,
                        headers,
                        body,
                    });
                }
                Err(e) => last_err = Some(format!("{url}: {e}")),
            }
        }
        bail!(
            "no endpoint answered ({})",
            last_err.unwrap_or_else(|| "no endpoints given".into())
        )
    }

    /// Sends the request to one specific endpoint.
    pub async fn request_one(&self, endpoint: &str, path: &str) -> anyhow::Result<Answer> {
        let one = ClientArgs {
            endpoints: vec![endpoint.to_string()],
            ..self.clone()
        };
        one.request(Method::GET, path, None).await
    }
}

/// Percent-encodes a key for a URL path (keeps `/` so keys read naturally).
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints rows as an aligned table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_paths() {
        assert_eq!(encode_key("a/b c"), "a/b%20c");
        assert_eq!(encode_key("é"), "%C3%A9");
        assert_eq!(base_url("127.0.0.1:8080/"), "http://127.0.0.1:8080");
    }
}
