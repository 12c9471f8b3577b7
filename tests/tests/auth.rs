//! etcd's auth over real processes with the real etcdctl: users, roles with
//! prefix permissions, `auth enable`, allowed and refused requests on the
//! leader and a follower, a token used on another member, `auth disable`;
//! tokens expiring after `--auth-token-ttl`.

use std::time::Duration;

use raftkv::grpc::proto::etcdserverpb::{self as pb, auth_client::AuthClient, kv_client::KvClient};
use raftkv_e2e::{Cluster, Options, etcdctl};
use tonic::Request;

/// etcdctl's error output, or its output when it unexpectedly succeeded.
fn etcdctl_err(endpoint: &str, args: &[&str]) -> String {
    match etcdctl(endpoint, args, "") {
        Ok(out) => format!("unexpected success: {out}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_manages_users_and_roles_and_auth_is_enforced_on_every_member() -> anyhow::Result<()>
{
    let c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|&i| i != leader).unwrap_or(1);
    let (el, ef) = (c.client_endpoint(leader), c.client_endpoint(follower));

    // The bootstrap etcd documents: root, a role with a prefix, a user.
    assert_eq!(
        etcdctl(&ef, &["user", "add", "root:rootpw"], "")?,
        "User root created\n"
    );
    assert_eq!(
        etcdctl(&el, &["role", "add", "app"], "")?,
        "Role app created\n"
    );
    etcdctl(
        &ef,
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "/app/",
        ],
        "",
    )?;
    etcdctl(
        &el,
        &["role", "grant-permission", "app", "read", "/shared"],
        "",
    )?;
    // For the HTTP API, whose keys are URL paths.
    etcdctl(
        &el,
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "h/",
        ],
        "",
    )?;
    etcdctl(&el, &["user", "add", "alice:alicepw"], "")?;
    etcdctl(&el, &["user", "grant-role", "alice", "app"], "")?;
    assert_eq!(etcdctl(&el, &["user", "list"], "")?, "alice\nroot\n");
    assert_eq!(etcdctl(&el, &["role", "list"], "")?, "app\n");
    assert_eq!(
        etcdctl(&el, &["user", "get", "alice"], "")?,
        "User: alice\nRoles: app\n"
    );
    let role = etcdctl(&el, &["role", "get", "app"], "")?;
    assert!(
        role.contains("[/app/, /app0) (prefix /app/)") && role.contains("/shared"),
        "{role}"
    );
    etcdctl(&el, &["put", "/shared", "s"], "")?;
    etcdctl(&el, &["put", "/other", "o"], "")?;

    // Enabling without root's role: etcdctl adds and grants it itself.
    assert_eq!(
        etcdctl(&ef, &["auth", "enable"], "")?,
        "Authentication Enabled\n"
    );
    // Every member applies the change; until then a member may still
    // answer as before.
    for e in [&el, &ef] {
        let e = e.clone();
        Cluster::eventually(Duration::from_secs(5), "auth enforced", || {
            let e = e.clone();
            async move {
                etcdctl_err(&e, &["get", "/shared"])
                    .contains("etcdserver: user name is empty")
                    .then_some(())
            }
        })
        .await?;
    }

    let alice = "--user=alice:alicepw";
    for (e, v) in [(&el, "from-leader"), (&ef, "from-follower")] {
        // Allowed: the prefix, read-write; the single key, read.
        assert_eq!(etcdctl(e, &[alice, "put", "/app/k", v], "")?, "OK\n");
        assert_eq!(
            etcdctl(e, &[alice, "get", "--print-value-only", "/app/k"], "")?,
            format!("{v}\n")
        );
        assert_eq!(
            etcdctl(e, &[alice, "get", "--prefix", "--keys-only", "/app/"], "")?,
            "/app/k\n\n"
        );
        assert_eq!(etcdctl(e, &[alice, "get", "/shared"], "")?, "/shared\ns\n");
        // Refused: outside the prefix, a write on a read-only key, a range
        // reaching out of the prefix, administration.
        for args in [
            &[alice, "put", "/other", "x"][..],
            &[alice, "get", "/other"],
            &[alice, "put", "/shared", "x"],
            &[alice, "get", "--from-key", "/app/"],
            &[alice, "del", "--prefix", "/"],
            &[alice, "user", "list"],
        ] {
            let err = etcdctl_err(e, args);
            assert!(
                err.contains("etcdserver: permission denied"),
                "{args:?}: {err}"
            );
        }
        let err = etcdctl_err(e, &["--user=alice:wrong", "get", "/app/k"]);
        assert!(
            err.contains("etcdserver: authentication failed, invalid user ID or password"),
            "{err}"
        );
    }
    assert_eq!(
        etcdctl(&el, &["--user=root:rootpw", "get", "/other"], "")?,
        "/other\no\n"
    );
    assert_eq!(
        etcdctl(&ef, &["--user=root:rootpw", "user", "get", "root"], "")?,
        "User: root\nRoles: root\n"
    );

    // A token from one member works on another.
    let token = {
        let mut auth = AuthClient::connect(format!("http://{el}")).await?;
        auth.authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await?
        .into_inner()
        .token
    };
    let mut kv = KvClient::connect(format!("http://{ef}")).await?;
    let mut get = Request::new(pb::RangeRequest {
        key: b"/app/k".to_vec().into(),
        ..Default::default()
    });
    get.metadata_mut().insert("token", token.parse()?);
    let got = kv.range(get).await?.into_inner();
    assert_eq!(got.kvs.len(), 1);
    // A forged token is etcd's "invalid auth token", which makes etcd's
    // clients authenticate again.
    let mut bad = Request::new(pb::RangeRequest {
        key: b"/app/k".to_vec().into(),
        ..Default::default()
    });
    bad.metadata_mut()
        .insert("token", format!("{token}x").parse()?);
    let err = kv
        .range(bad)
        .await
        .err()
        .map(|s| (s.code(), s.message().to_string()));
    assert_eq!(
        err,
        Some((
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        ))
    );

    // The HTTP API: the same users, a token from the login call or Basic.
    let http = reqwest::Client::new();
    let (hl, hf) = (c.http(leader)?, c.http(follower)?);
    let anon = http.put(format!("{hf}/v1/kv/h/x")).body("v").send().await?;
    assert_eq!(anon.status(), 401);
    let body: serde_json::Value = anon.json().await?;
    assert_eq!(body["error"], "etcdserver: user name is empty", "{body}");
    let login: serde_json::Value = http
        .post(format!("{hl}/v1/auth/login"))
        .body(r#"{"name":"alice","password":"alicepw"}"#)
        .send()
        .await?
        .json()
        .await?;
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap_or_default());
    let put = http
        .put(format!("{hf}/v1/kv/h/x"))
        .header("authorization", &bearer)
        .body("v")
        .send()
        .await?;
    assert_eq!(put.status(), 200, "{}", put.text().await?);
    let got = http
        .get(format!("{hl}/v1/kv/h/x"))
        .basic_auth("alice", Some("alicepw"))
        .send()
        .await?;
    assert_eq!(
        (got.status().as_u16(), got.text().await?),
        (200, "v".into())
    );
    let denied = http
        .get(format!("{hf}/v1/kv/other"))
        .header("authorization", &bearer)
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    let denied = http
        .post(format!("{hl}/v1/leader/transfer"))
        .header("authorization", &bearer)
        .body(format!(r#"{{"to":{follower}}}"#))
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    let wrong = http
        .get(format!("{hl}/v1/kv/h/x"))
        .basic_auth("alice", Some("nope"))
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);

    // A password change: the old password stops working.
    etcdctl(
        &el,
        &[
            "--user=root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        "alicepw2\n",
    )?;
    let err = etcdctl_err(&el, &[alice, "get", "/app/k"]);
    assert!(err.contains("authentication failed"), "{err}");
    etcdctl(&el, &["--user=alice:alicepw2", "get", "/app/k"], "")?;

    // Root cannot be removed while auth is on; disabling needs root.
    let err = etcdctl_err(&el, &["--user=root:rootpw", "user", "delete", "root"]);
    assert!(err.contains("etcdserver: invalid auth management"), "{err}");
    let err = etcdctl_err(&el, &["--user=alice:alicepw2", "auth", "disable"]);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        etcdctl(&ef, &["--user=root:rootpw", "auth", "disable"], "")?,
        "Authentication Disabled\n"
    );
    for e in [&el, &ef] {
        let e = e.clone();
        Cluster::eventually(Duration::from_secs(5), "auth off", || {
            let e = e.clone();
            async move {
                etcdctl(&e, &["get", "/other"], "")
                    .ok()
                    .filter(|o| o == "/other\no\n")
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_cannot_be_enabled_without_root() -> anyhow::Result<()> {
    let c = Cluster::start(1, Options::default())?;
    c.wait_leader(Duration::from_secs(20)).await?;
    let e = c.client_endpoint(1);
    let err = etcdctl_err(&e, &["auth", "enable"]);
    assert!(
        err.contains("etcdserver: root user does not exist"),
        "{err}"
    );
    // Nothing changed: requests without credentials still work.
    etcdctl(&e, &["put", "k", "v"], "")?;
    Ok(())
}

/// `--auth-token-ttl` decides how long the tokens a member issues last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_last_as_long_as_auth_token_ttl_says() -> anyhow::Result<()> {
    let c = Cluster::start(
        1,
        Options {
            extra_args: vec!["--auth-token-ttl".into(), "1".into()],
            ..Options::default()
        },
    )?;
    c.wait_leader(Duration::from_secs(20)).await?;
    let mut auth = AuthClient::connect(format!("http://{}", c.client_endpoint(1))).await?;
    auth.user_add(pb::AuthUserAddRequest {
        name: "root".into(),
        password: "rootpw".into(),
        ..Default::default()
    })
    .await?;
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await?;
    auth.auth_enable(pb::AuthEnableRequest {}).await?;

    let http = reqwest::Client::new();
    let h = c.http(1)?;
    let login: serde_json::Value = http
        .post(format!("{h}/v1/auth/login"))
        .body(r#"{"name":"root","password":"rootpw"}"#)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(login["ttl"], 1, "{login}");
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap_or_default());
    // The default TTL (300 s) would keep it valid for minutes.
    Cluster::eventually(Duration::from_secs(10), "the token to expire", || {
        let (http, h, bearer) = (http.clone(), h.clone(), bearer.clone());
        async move {
            let r = http
                .get(format!("{h}/v1/kv/x"))
                .header("authorization", bearer)
                .send()
                .await
                .ok()?;
            (r.status() == 401).then_some(())?;
            let body: serde_json::Value = r.json().await.ok()?;
            (body["error"] == "etcdserver: invalid auth token").then_some(())
        }
    })
    .await?;
    Ok(())
}
