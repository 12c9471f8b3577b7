//! The client API over real gRPC: each test starts the services on a
//! loopback port in front of [`FakeBackend`] and talks to them with etcd's
//! client stubs (and, in one test, with the real `etcdctl`).

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

use super::fake_backend::{CLUSTER_ID, FakeBackend, MEMBER_ID, TERM};
use super::proto::etcdserverpb::{
    self as pb, cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, range_request::SortOrder, range_request::SortTarget,
};
use crate::server::{ClientError, Consistency};
use tonic::Request;

struct Running {
    addr: SocketAddr,
    backend: FakeBackend,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    async fn start() -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = FakeBackend::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(super::serve_with_shutdown(
            listener,
            None,
            backend.clone(),
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            backend,
            stop: Some(stop),
            server,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap().unwrap();
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> pb::PutResponse {
    kv.put(pb::PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn get(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_put_is_read_back_with_etcd_metadata_and_headers() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let first = put(&mut kv, "a", "1").await;
    let h = first.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.revision, h.raft_term),
        (CLUSTER_ID, MEMBER_ID, 2, TERM),
        "a fresh store is at revision 1, like etcd: the first write makes 2"
    );
    put(&mut kv, "a", "2").await;

    let got = kv.range(get("a")).await.unwrap().into_inner();
    assert_eq!(got.count, 1);
    let a = &got.kvs[0];
    assert_eq!((&a.key[..], &a.value[..]), (&b"a"[..], &b"2"[..]));
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(got.header.unwrap().revision, 3);
    assert_eq!(
        r.backend.last_consistency(),
        Some(Consistency::Linearizable)
    );

    let missing = kv.range(get("b")).await.unwrap().into_inner();
    assert_eq!((missing.count, missing.kvs.len()), (0, 0));
    r.shutdown().await;
}

#[tokio::test]
async fn a_serializable_range_is_served_as_a_local_read() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    kv.range(pb::RangeRequest {
        serializable: true,
        ..get("a")
    })
    .await
    .unwrap();
    assert_eq!(
        r.backend.last_consistency(),
        Some(Consistency::Serializable)
    );
    r.shutdown().await;
}

#[tokio::test]
async fn prefix_ranges_honour_limit_keys_only_and_count_only() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for k in ["p/1", "p/2", "p/3", "q"] {
        put(&mut kv, k, "v").await;
    }
    // etcdctl get --prefix p/ sends range_end = "p0".
    let prefix = |limit| pb::RangeRequest {
        key: b("p/"),
        range_end: b("p0"),
        limit,
        ..Default::default()
    };
    let all = kv.range(prefix(0)).await.unwrap().into_inner();
    assert_eq!(all.kvs.len(), 3);
    assert!(!all.more);
    let two = kv.range(prefix(2)).await.unwrap().into_inner();
    assert_eq!((two.kvs.len(), two.count, two.more), (2, 3, true));

    let keys = kv
        .range(pb::RangeRequest {
            keys_only: true,
            ..prefix(0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    let count = kv
        .range(pb::RangeRequest {
            count_only: true,
            ..prefix(0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((count.count, count.kvs.len()), (3, 0));

    // "\0" as range_end: every key from `key` on.
    let from_p2 = kv
        .range(pb::RangeRequest {
            key: b("p/2"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = from_p2.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("p/2"), b("p/3"), b("q")]);
    r.shutdown().await;
}

#[tokio::test]
async fn a_descending_sort_applies_before_the_limit() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for k in ["k1", "k2", "k3"] {
        put(&mut kv, k, "v").await;
    }
    let resp = kv
        .range(pb::RangeRequest {
            key: b("k"),
            range_end: b("l"),
            limit: 2,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("k3"), b("k2")]);
    assert!(resp.more);
    r.shutdown().await;
}

#[tokio::test]
async fn reads_at_past_revisions_see_history_until_compacted() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "a", "1").await; // 2
    put(&mut kv, "a", "2").await; // 3
    kv.delete_range(pb::DeleteRangeRequest {
        key: b("a"),
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    let at = |revision| pb::RangeRequest {
        revision,
        ..get("a")
    };
    let value_at = |resp: pb::RangeResponse| {
        assert_eq!(resp.header.unwrap().revision, 4, "the header is current");
        resp.kvs
            .first()
            .map(|kv| (kv.value.clone(), kv.mod_revision))
    };
    assert_eq!(value_at(kv.range(at(1)).await.unwrap().into_inner()), None);
    assert_eq!(
        value_at(kv.range(at(2)).await.unwrap().into_inner()),
        Some((b("1"), 2))
    );
    assert_eq!(
        value_at(kv.range(at(3)).await.unwrap().into_inner()),
        Some((b("2"), 3))
    );
    assert_eq!(value_at(kv.range(at(4)).await.unwrap().into_inner()), None);
    let future = kv.range(at(5)).await.unwrap_err();
    assert_eq!(future.code(), Code::OutOfRange);
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    kv.compact(pb::CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .unwrap();
    let old = kv.range(at(2)).await.unwrap_err();
    assert_eq!(old.code(), Code::OutOfRange);
    assert_eq!(
        old.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        value_at(kv.range(at(3)).await.unwrap().into_inner()),
        Some((b("2"), 3))
    );
    r.shutdown().await;
}

#[tokio::test]
async fn page_two_of_a_list_reads_at_the_revision_of_page_one_after_writes() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for k in ["p/1", "p/2", "p/3", "p/4"] {
        put(&mut kv, k, "old").await;
    }
    let page = |key: &str, revision| pb::RangeRequest {
        key: b(key),
        range_end: b("p0"),
        limit: 2,
        revision,
        ..Default::default()
    };
    let first = kv.range(page("p/", 0)).await.unwrap().into_inner();
    let rev = first.header.unwrap().revision;
    assert!(first.more);
    // Writes between the pages: a change, a delete and a new key.
    put(&mut kv, "p/3", "new").await;
    put(&mut kv, "p/35", "new").await;
    kv.delete_range(pb::DeleteRangeRequest {
        key: b("p/4"),
        ..Default::default()
    })
    .await
    .unwrap();
    let next_key = [&first.kvs[1].key[..], b"\0"].concat();
    let second = kv
        .range(page(std::str::from_utf8(&next_key).unwrap(), rev))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = second
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(got, vec![(b("p/3"), b("old")), (b("p/4"), b("old"))]);
    assert!(!second.more);
    r.shutdown().await;
}

#[tokio::test]
async fn sort_order_none_with_a_target_other_than_key_sorts_ascending() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for k in ["k3", "k1", "k2"] {
        put(&mut kv, k, "v").await;
    }
    let resp = kv
        .range(pb::RangeRequest {
            key: b("k"),
            range_end: b("l"),
            sort_order: SortOrder::None as i32,
            sort_target: SortTarget::Mod as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b("k3"), b("k1"), b("k2")]);
    r.shutdown().await;
}

#[tokio::test]
async fn put_and_delete_return_previous_values_when_asked() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "d/1", "old").await;
    put(&mut kv, "d/2", "x").await;
    let replaced = kv
        .put(pb::PutRequest {
            key: b("d/1"),
            value: b("new"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&replaced.prev_kv.unwrap().value[..], b"old");

    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b("d/"),
            range_end: b("d0"),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(deleted.prev_kvs.len(), 2);
    assert_eq!(deleted.header.unwrap().revision, 5);
    let nothing = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b("d/1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.deleted, 0);
    r.shutdown().await;
}

/// etcd's auth over the wire: off by default, enabled only with root,
/// then every call needs a token, and permissions decide.
#[tokio::test]
async fn auth_is_off_until_root_enables_it_and_then_tokens_and_permissions_decide() {
    use super::proto::etcdserverpb::auth_client::AuthClient;
    let r = Running::start().await;
    let mut auth = AuthClient::new(r.channel().await);
    let mut kv = r.kv().await;
    let status = auth
        .auth_status(pb::AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.enabled);
    assert_eq!(status.auth_revision, 1);
    assert_eq!(status.header.unwrap().member_id, MEMBER_ID);
    let login = auth
        .authenticate(pb::AuthenticateRequest {
            name: "root".into(),
            password: "secret".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (login.code(), login.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled"
        )
    );
    let enable = auth
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (enable.code(), enable.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist"
        )
    );
    for (name, password) in [("root", "secret"), ("alice", "pw")] {
        auth.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let enable = auth
        .auth_enable(pb::AuthEnableRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        enable.message(),
        "etcdserver: root user does not have root role"
    );
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.role_add(pb::AuthRoleAddRequest { name: "app".into() })
        .await
        .unwrap();
    auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: Some(pb::Permission {
            perm_type: pb::permission::Type::Readwrite as i32,
            key: b("/app/"),
            range_end: b("/app0"),
        }),
    })
    .await
    .unwrap();
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "app".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();

    // No credentials; a wrong password.
    let anon = kv.range(get("/app/k")).await.unwrap_err();
    assert_eq!(
        (anon.code(), anon.message()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );
    let wrong = auth
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.code(), wrong.message()),
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password"
        )
    );
    let token = auth
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let with_token = |mut req: Request<pb::PutRequest>| {
        req.metadata_mut().insert("token", token.parse().unwrap());
        req
    };
    kv.put(with_token(Request::new(pb::PutRequest {
        key: b("/app/k"),
        value: b("v"),
        ..Default::default()
    })))
    .await
    .unwrap();
    let denied = kv
        .put(with_token(Request::new(pb::PutRequest {
            key: b("/other"),
            value: b("v"),
            ..Default::default()
        })))
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );
    // A user that is not root administers nothing.
    let mut list = Request::new(pb::AuthUserListRequest {});
    list.metadata_mut().insert("token", token.parse().unwrap());
    assert_eq!(
        auth.user_list(list).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A watch needs read on its range: refused watches are canceled with
    // etcd's reason, on a stream that stays open.
    {
        use super::proto::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion};
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut open = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        open.metadata_mut().insert("token", token.parse().unwrap());
        let mut events = WatchClient::new(r.channel().await)
            .watch(open)
            .await
            .unwrap()
            .into_inner();
        for (key, end) in [("/other", ""), ("/app/", "/app0")] {
            tx.send(pb::WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                    key: b(key),
                    range_end: b(end),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
        }
        let denied = events.message().await.unwrap().unwrap();
        assert!(denied.created && denied.canceled, "{denied:?}");
        assert_eq!(denied.cancel_reason, "etcdserver: permission denied");
        let allowed = events.message().await.unwrap().unwrap();
        assert!(allowed.created && !allowed.canceled, "{allowed:?}");
    }
    let mut bad = Request::new(get("/app/k"));
    bad.metadata_mut()
        .insert("token", "raftkv1.x.y".parse().unwrap());
    let bad = kv.range(bad).await.unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    r.shutdown().await;
}

/// Root, and alice with readwrite on `/app/` (role `app`), auth enabled;
/// alice's token.
async fn alice_under_auth(r: &Running) -> String {
    use super::proto::etcdserverpb::auth_client::AuthClient;
    let mut auth = AuthClient::new(r.channel().await);
    for (name, password) in [("root", "secret"), ("alice", "pw")] {
        auth.user_add(pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "app")] {
        if role != "root" {
            auth.role_add(pb::AuthRoleAddRequest { name: role.into() })
                .await
                .unwrap();
            auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(pb::Permission {
                    perm_type: pb::permission::Type::Readwrite as i32,
                    key: b("/app/"),
                    range_end: b("/app0"),
                }),
            })
            .await
            .unwrap();
        }
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    auth.authenticate(pb::AuthenticateRequest {
        name: "alice".into(),
        password: "pw".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("token", token.parse().unwrap());
    req
}

/// The race the apply-time check closes: the gate lets a write through,
/// then a revoke commits before the write's entry does.
#[tokio::test]
async fn a_write_admitted_before_a_revoke_committed_is_denied_when_it_applies() {
    use crate::storage::auth::AuthOp;
    use crate::storage::{Command, Op};
    let r = Running::start().await;
    let token = alice_under_auth(&r).await;
    let mut kv = r.kv().await;
    let revoke = || {
        Command::new(Op::Auth(AuthOp::UserRevokeRole {
            user: "alice".into(),
            role: "app".into(),
        }))
    };
    r.backend.before_next_write(revoke());
    let denied = kv
        .put(with_token(
            &token,
            pb::PutRequest {
                key: b("/app/k"),
                value: b("v"),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, "etcdserver: permission denied")
    );
    assert_eq!(r.backend.kv().get(b"/app/k").unwrap(), None);

    // A transaction is checked as a whole: the role back, the revoke
    // racing again, and the txn (a compare and a put) is refused too.
    r.backend
        .commit(Command::new(Op::Auth(AuthOp::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        })));
    kv.put(with_token(
        &token,
        pb::PutRequest {
            key: b("/app/k"),
            value: b("1"),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    r.backend.before_next_write(revoke());
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: b("/app/k"),
            target: pb::compare::CompareTarget::Version as i32,
            result: pb::compare::CompareResult::Greater as i32,
            target_union: Some(pb::compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b("/app/k"),
                value: b("2"),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let denied = kv.txn(with_token(&token, txn)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let stored = r.backend.kv().get(b"/app/k").unwrap().unwrap();
    assert_eq!(&stored.value[..], b"1");
    r.shutdown().await;
}

#[tokio::test]
async fn authenticate_issues_tokens_for_the_backends_ttl() {
    let r = Running::start().await;
    // A TTL of zero: the token has expired the moment it is issued, which
    // shows the TTL used is the backend's and not a constant.
    r.backend.set_auth_token_ttl(std::time::Duration::ZERO);
    let token = alice_under_auth(&r).await;
    let mut kv = r.kv().await;
    let expired = kv
        .range(with_token(&token, get("/app/k")))
        .await
        .unwrap_err();
    assert_eq!(
        (expired.code(), expired.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    r.backend
        .set_auth_token_ttl(crate::auth::token::DEFAULT_TTL);
    let token = alice_under_auth_token(&r).await;
    kv.range(with_token(&token, get("/app/k"))).await.unwrap();
    r.shutdown().await;
}

/// A fresh token for alice (auth already set up).
async fn alice_under_auth_token(r: &Running) -> String {
    use super::proto::etcdserverpb::auth_client::AuthClient;
    AuthClient::new(r.channel().await)
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "pw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

#[tokio::test]
async fn what_raftkv_does_not_implement_answers_unimplemented() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let leased = kv
        .put(pb::PutRequest {
            key: b("a"),
            lease: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(leased.code(), Code::NotFound, "no lease 7 was granted");
    assert_eq!(leased.message(), "etcdserver: requested lease not found");
    let mut cluster = ClusterClient::new(r.channel().await);
    let update = cluster
        .member_update(pb::MemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["http://x:1".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::Unimplemented);
    // Nothing was written by the refused put.
    assert_eq!(kv.range(get("a")).await.unwrap().into_inner().count, 0);
    r.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let empty = kv.range(get("")).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let ignored_value = kv
        .put(pb::PutRequest {
            key: b("a"),
            value: b("v"),
            ignore_value: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (ignored_value.code(), ignored_value.message()),
        (Code::InvalidArgument, "etcdserver: value is provided")
    );
    let no_key = kv.put(pb::PutRequest::default()).await.unwrap_err();
    assert_eq!(no_key.code(), Code::InvalidArgument);
    r.shutdown().await;
}

#[tokio::test]
async fn node_errors_become_the_codes_etcd_clients_expect() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let cases = [
        (ClientError::NoLeader, Code::Unavailable),
        (ClientError::Timeout, Code::Unavailable),
        (ClientError::TooLarge("value".into()), Code::InvalidArgument),
        (ClientError::NotFound("x".into()), Code::NotFound),
        (
            ClientError::MembershipChangeInProgress,
            Code::FailedPrecondition,
        ),
        (ClientError::Internal("x".into()), Code::Internal),
        (
            ClientError::PermissionDenied("etcdserver: permission denied".into()),
            Code::PermissionDenied,
        ),
    ];
    for (err, code) in cases {
        r.backend.fail_with(Some(err.clone()));
        let got = kv.range(get("a")).await.unwrap_err();
        assert_eq!(got.code(), code, "{err:?}");
    }
    r.backend.fail_with(Some(ClientError::NoLeader));
    let e = kv
        .put(pb::PutRequest {
            key: b("a"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: no leader");
    r.backend.fail_with(None);
    r.shutdown().await;
}

#[tokio::test]
async fn compact_goes_through_the_log_and_answers_like_etcd() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "a", "1").await;
    put(&mut kv, "a", "2").await;
    let ok = kv
        .compact(pb::CompactionRequest {
            revision: 2,
            physical: true,
        })
        .await
        .unwrap()
        .into_inner();
    // The header is the store's revision once the compaction applied: it
    // never lags a write acknowledged before.
    assert_eq!(ok.header.unwrap().revision, 3);
    let again = kv
        .compact(pb::CompactionRequest {
            revision: 2,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (again.code(), again.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let future = kv
        .compact(pb::CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (future.code(), future.message()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_txn_writing_one_key_twice_is_refused_like_etcd() {
    use pb::request_op::Request;
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let put_op = |k: &str, v: &str| pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    };
    let dup = kv
        .txn(pb::TxnRequest {
            success: vec![put_op("k", "1"), put_op("k", "2")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (dup.code(), dup.message()),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );
    assert_eq!(kv.range(get("k")).await.unwrap().into_inner().count, 0);
    r.shutdown().await;
}

#[tokio::test]
async fn nested_txns_and_reads_at_a_revision_inside_a_txn_work() {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    use pb::response_op::Response;
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "k", "1").await; // 2
    put(&mut kv, "k", "2").await; // 3
    let inner = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: b("k"),
            target_union: Some(TargetUnion::Value(b("2"))),
            ..Default::default()
        }],
        success: vec![
            pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    revision: 2,
                    ..get("k")
                })),
            },
            pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: b("k"),
                    value: b("3"),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    let resp = kv
        .txn(pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(Request::RequestTxn(inner)),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4);
    let Some(Response::ResponseTxn(nested)) = &resp.responses[0].response else {
        panic!("{resp:?}");
    };
    assert!(nested.succeeded);
    // etcd's headers: a nested transaction's is empty, a response inside
    // one carries the revision alone.
    assert_eq!(nested.header, Some(pb::ResponseHeader::default()));
    let Some(Response::ResponseRange(old)) = &nested.responses[0].response else {
        panic!("{nested:?}");
    };
    assert_eq!(&old.kvs[0].value[..], b"1");
    assert_eq!(
        old.header,
        Some(pb::ResponseHeader {
            revision: 4,
            ..Default::default()
        })
    );
    let now = kv.range(get("k")).await.unwrap().into_inner();
    assert_eq!(&now.kvs[0].value[..], b"3");
    r.shutdown().await;
}

#[tokio::test]
async fn ignore_value_keeps_the_value_and_needs_the_key() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let ignoring = |key: &str| pb::PutRequest {
        key: b(key),
        ignore_value: true,
        ..Default::default()
    };
    let missing = kv.put(ignoring("k")).await.unwrap_err();
    assert_eq!(
        (missing.code(), missing.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );
    put(&mut kv, "k", "kept").await;
    kv.put(ignoring("k")).await.unwrap();
    let got = kv.range(get("k")).await.unwrap().into_inner();
    assert_eq!(
        (&got.kvs[0].value[..], got.kvs[0].version),
        (&b"kept"[..], 2)
    );
    r.shutdown().await;
}

#[tokio::test]
async fn status_reports_the_nodes_raft_position() {
    let r = Running::start().await;
    let mut m = MaintenanceClient::new(r.channel().await);
    let s = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.header.unwrap().member_id, MEMBER_ID);
    assert_eq!(
        (s.leader, s.raft_term, s.raft_index, s.raft_applied_index),
        (MEMBER_ID, TERM, 42, 41)
    );
    assert_eq!(s.db_size, 1024);
    assert!(!s.is_learner);
    assert!(!s.version.is_empty());
    // etcd 3.6's fields: the quota, and no downgrade under way.
    assert_eq!(s.db_size_quota, 1 << 30);
    assert_eq!(s.downgrade_info, Some(pb::DowngradeInfo::default()));
    r.shutdown().await;
}

/// etcd's limit on a transaction's size: the longest of its compare,
/// success and failure lists, at most 128; a nested transaction gets what
/// is left of its parent's budget. Refused with etcd's own message.
#[tokio::test]
async fn txn_size_is_limited_per_list_like_etcd() {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "k", "v").await;
    let puts = |n: usize| -> Vec<pb::RequestOp> {
        (0..n)
            .map(|i| pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: b(&format!("p{i:03}")),
                    value: b("v"),
                    ..Default::default()
                })),
            })
            .collect()
    };
    let compares = |n: usize| -> Vec<pb::Compare> {
        (0..n)
            .map(|_| pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: b("k"),
                target_union: Some(TargetUnion::Value(b("v"))),
                ..Default::default()
            })
            .collect()
    };
    let full = kv
        .txn(pb::TxnRequest {
            compare: compares(128),
            success: puts(128),
            failure: puts(128),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(full.succeeded);
    let too_many = |status: tonic::Status| {
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )
        );
    };
    too_many(
        kv.txn(pb::TxnRequest {
            success: puts(129),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    // Two ops outside leave 126 for the nested one.
    let nested = |n: usize| pb::TxnRequest {
        success: vec![
            puts(1).remove(0),
            pb::RequestOp {
                request: Some(Request::RequestTxn(pb::TxnRequest {
                    success: puts(n).into_iter().skip(1).collect(),
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    kv.txn(nested(127)).await.unwrap();
    too_many(kv.txn(nested(128)).await.unwrap_err());
    r.shutdown().await;
}

#[tokio::test]
async fn member_add_refuses_a_bad_peer_url_with_invalid_argument() {
    let r = Running::start().await;
    let mut c = ClusterClient::new(r.channel().await);
    for bad in crate::server::bad_member_urls() {
        let shown = bad[..bad.len().min(40)].to_string();
        let err = c
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec![bad],
                is_learner: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{shown:?}: {err:?}");
        assert!(err.message().contains("peer URL"), "{shown:?}: {err:?}");
    }
    let list = c
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 3, "nothing was added");
    r.shutdown().await;
}

#[tokio::test]
async fn members_are_added_as_learners_promoted_and_removed() {
    let r = Running::start().await;
    let mut c = ClusterClient::new(r.channel().await);
    let list = c
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 3);
    assert_eq!(list.members[0].peer_ur_ls, vec!["http://127.0.0.1:2381"]);

    let voter = c
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:2390".into()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    assert_eq!(voter.code(), Code::FailedPrecondition);
    assert!(voter.message().contains("learner"));

    let added = c
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:2390".into()],
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner();
    let new = added.member.unwrap();
    assert!(new.is_learner);
    assert!(new.client_ur_ls.is_empty());
    assert_eq!(added.members.len(), 4);

    let promoted = c
        .member_promote(pb::MemberPromoteRequest { id: new.id })
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.members.iter().all(|m| !m.is_learner));
    let again = c
        .member_promote(pb::MemberPromoteRequest { id: new.id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let removed = c
        .member_remove(pb::MemberRemoveRequest { id: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.members.len(), 3);
    assert!(removed.members.iter().all(|m| m.id != 2));
    let unknown = c
        .member_remove(pb::MemberRemoveRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    r.shutdown().await;
}

/// Runs etcdctl with `input` on its standard input (interactive `txn`).
async fn etcdctl_stdin(endpoint: &str, args: &[&str], input: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl must be installed (.ci/install installs etcd-client)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The real `etcdctl` (Debian's etcd-client, installed by .ci/install)
/// against the services: the wire format is etcd's, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_etcdctl_works_against_the_services() {
    let r = Running::start().await;
    let endpoint = r.addr.to_string();
    let etcdctl = |args: &'static [&'static str]| {
        let endpoint = endpoint.clone();
        async move {
            let out = tokio::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--endpoints")
                .arg(&endpoint)
                .arg("--dial-timeout=5s")
                .arg("--command-timeout=5s")
                .args(args)
                .output()
                .await
                .expect("etcdctl must be installed (.ci/install installs etcd-client)");
            assert!(
                out.status.success(),
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    assert_eq!(etcdctl(&["put", "/app/a", "1"]).await.trim(), "OK");
    etcdctl(&["put", "/app/b", "2"]).await;
    etcdctl(&["put", "/other", "3"]).await;
    assert_eq!(etcdctl(&["get", "/app/a"]).await, "/app/a\n1\n");
    assert_eq!(
        etcdctl(&["get", "--prefix", "/app/"]).await,
        "/app/a\n1\n/app/b\n2\n"
    );
    assert_eq!(
        etcdctl(&["get", "--consistency=s", "/other"]).await,
        "/other\n3\n"
    );
    assert_eq!(
        r.backend.last_consistency(),
        Some(Consistency::Serializable)
    );
    let txn = etcdctl_stdin(
        &endpoint,
        &["txn"],
        "value(\"/app/a\") = \"1\"\n\nput /app/a won\n\nput /app/a lost\n\n",
    )
    .await;
    assert_eq!(txn, "SUCCESS\n\nOK\n", "{txn}");
    assert_eq!(
        etcdctl(&["get", "/app/a", "--print-value-only"]).await,
        "won\n"
    );
    assert_eq!(etcdctl(&["del", "--prefix", "/app/"]).await.trim(), "2");
    assert_eq!(etcdctl(&["get", "--prefix", "/app/"]).await, "");
    let members = etcdctl(&["member", "list"]).await;
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains("http://127.0.0.1:2381"), "{members}");
    let status = etcdctl(&["endpoint", "status", "-w", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v[0]["Status"]["raftTerm"], TERM);
    assert_eq!(v[0]["Status"]["leader"], MEMBER_ID);

    let added = etcdctl(&[
        "member",
        "add",
        "n4",
        "--peer-urls",
        "http://127.0.0.1:2390",
        "--learner",
    ])
    .await;
    assert!(added.contains(" 4 added to cluster"), "{added}");
    assert!(added.contains("n4=http://127.0.0.1:2390"), "{added}");
    assert!(
        etcdctl(&["member", "list"]).await.contains("true"),
        "the new member is a learner"
    );
    let promoted = etcdctl(&["member", "promote", "4"]).await;
    assert!(promoted.contains("promoted"), "{promoted}");
    let removed = etcdctl(&["member", "remove", "2"]).await;
    assert!(removed.contains("removed"), "{removed}");
    let members = etcdctl(&["member", "list"]).await;
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(!members.contains("true"), "{members}");
    r.shutdown().await;
}

#[tokio::test]
async fn a_txn_runs_the_branch_its_compares_choose() {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request;
    use pb::response_op::Response;
    let r = Running::start().await;
    let mut kv = r.kv().await;
    put(&mut kv, "acct", "10").await;
    let cas = |expected: &str, new: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: b("acct"),
            target_union: Some(TargetUnion::Value(b(expected))),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: b("acct"),
                value: b(new),
                prev_kv: true,
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Request::RequestRange(get("acct"))),
        }],
    };
    let won = kv.txn(cas("10", "20")).await.unwrap().into_inner();
    assert!(won.succeeded);
    assert_eq!(won.header.unwrap().revision, 3);
    match &won.responses[0].response {
        Some(Response::ResponsePut(p)) => assert_eq!(&p.prev_kv.as_ref().unwrap().value[..], b"10"),
        other => panic!("{other:?}"),
    }
    let lost = kv.txn(cas("10", "30")).await.unwrap().into_inner();
    assert!(!lost.succeeded);
    match &lost.responses[0].response {
        Some(Response::ResponseRange(g)) => assert_eq!(&g.kvs[0].value[..], b"20"),
        other => panic!("{other:?}"),
    }

    // Compares on version, create and mod revision.
    let on = |target: CompareTarget, result: CompareResult, union: TargetUnion| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: result as i32,
            target: target as i32,
            key: b("acct"),
            target_union: Some(union),
            ..Default::default()
        }],
        ..Default::default()
    };
    for (req, expect) in [
        (
            on(
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(2),
            ),
            true,
        ),
        (
            on(
                CompareTarget::Create,
                CompareResult::Equal,
                TargetUnion::CreateRevision(2),
            ),
            true,
        ),
        (
            on(
                CompareTarget::Mod,
                CompareResult::Greater,
                TargetUnion::ModRevision(3),
            ),
            false,
        ),
        (
            on(
                CompareTarget::Mod,
                CompareResult::Less,
                TargetUnion::ModRevision(4),
            ),
            true,
        ),
        (
            on(
                CompareTarget::Version,
                CompareResult::NotEqual,
                TargetUnion::Version(2),
            ),
            false,
        ),
    ] {
        let got = kv.txn(req.clone()).await.unwrap().into_inner();
        assert_eq!(got.succeeded, expect, "{req:?}");
    }

    // The key has no lease: its lease compares as 0.
    let lease = on(
        CompareTarget::Lease,
        CompareResult::Equal,
        TargetUnion::Lease(0),
    );
    assert!(kv.txn(lease).await.unwrap().into_inner().succeeded);
    r.shutdown().await;
}

#[tokio::test]
async fn every_call_is_counted_in_the_nodes_metrics() {
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(super::serve_with_shutdown(
        listener,
        None,
        FakeBackend::new(),
        Some(metrics.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    put(&mut kv, "a", "1").await;
    kv.range(get("a")).await.unwrap();
    kv.range(get("")).await.unwrap_err();
    let text = metrics.render();
    for series in [
        r#"raftkv_grpc_requests_total{code="OK",method="Put"} 1"#,
        r#"raftkv_grpc_requests_total{code="OK",method="Range"} 1"#,
        r#"raftkv_grpc_requests_total{code="InvalidArgument",method="Range"} 1"#,
        r#"raftkv_grpc_request_duration_seconds_count{method="Range"} 2"#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

fn alarm(action: pb::alarm_request::AlarmAction, member_id: u64) -> pb::AlarmRequest {
    pb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: pb::AlarmType::Nospace as i32,
    }
}

#[tokio::test]
async fn nospace_refuses_writes_but_not_reads_deletes_or_compaction_until_disarmed() {
    use pb::alarm_request::AlarmAction as A;
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut m = MaintenanceClient::new(r.channel().await);
    put(&mut kv, "a", "1").await;
    put(&mut kv, "b", "2").await;
    let none = m.alarm(alarm(A::Get, 0)).await.unwrap().into_inner();
    assert!(none.alarms.is_empty(), "{none:?}");

    let raised = m.alarm(alarm(A::Activate, 9)).await.unwrap().into_inner();
    assert_eq!(raised.alarms.len(), 1);
    assert_eq!(raised.header.unwrap().member_id, MEMBER_ID);
    let listed = m.alarm(alarm(A::Get, 0)).await.unwrap().into_inner();
    assert_eq!(
        listed.alarms,
        vec![pb::AlarmMember {
            member_id: 9,
            alarm: pb::AlarmType::Nospace as i32
        }]
    );
    let status = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.errors, vec!["memberID:9 alarm:NOSPACE".to_string()]);

    let refused = kv
        .put(pb::PutRequest {
            key: b("c"),
            value: b("3"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    let txn_put = kv
        .txn(pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b("c"),
                    value: b("3"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(txn_put.code(), Code::ResourceExhausted);
    // Reads, deletes and compaction still work: space can be freed.
    assert_eq!(kv.range(get("a")).await.unwrap().into_inner().count, 1);
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    kv.compact(pb::CompactionRequest {
        revision: deleted.header.unwrap().revision,
        physical: false,
    })
    .await
    .unwrap();
    assert_eq!(kv.range(get("c")).await.unwrap().into_inner().count, 0);

    // Disarming another member's alarm clears nothing.
    let other = m.alarm(alarm(A::Deactivate, 8)).await.unwrap().into_inner();
    assert!(other.alarms.is_empty(), "{other:?}");
    let cleared = m.alarm(alarm(A::Deactivate, 9)).await.unwrap().into_inner();
    assert_eq!(cleared.alarms.len(), 1);
    assert!(
        m.alarm(alarm(A::Get, 0))
            .await
            .unwrap()
            .into_inner()
            .alarms
            .is_empty()
    );
    put(&mut kv, "c", "3").await;
    assert_eq!(kv.range(get("c")).await.unwrap().into_inner().count, 1);
    let status = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    r.shutdown().await;
}

#[tokio::test]
async fn an_alarm_without_a_type_cannot_be_raised() {
    let r = Running::start().await;
    let mut m = MaintenanceClient::new(r.channel().await);
    let e = m
        .alarm(pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: 1,
            alarm: pb::AlarmType::None as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    r.shutdown().await;
}

/// Runs etcdctl against `endpoint`; returns whether it succeeded, and its
/// standard output and error.
async fn etcdctl_run(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .await
        .expect("etcdctl must be installed (.ci/install installs etcd-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lists_and_disarms_alarms_and_sees_the_cluster_healthy() {
    let r = Running::start().await;
    let endpoint = r.addr.to_string();
    let (ok, out, err) = etcdctl_run(&endpoint, &["alarm", "list"]).await;
    assert!(ok && out.is_empty(), "{out} {err}");
    let (ok, _, err) = etcdctl_run(&endpoint, &["endpoint", "health"]).await;
    assert!(ok, "{err}");
    assert!(err.contains("is healthy"), "{err}");

    let mut m = MaintenanceClient::new(r.channel().await);
    m.alarm(alarm(pb::alarm_request::AlarmAction::Activate, 9))
        .await
        .unwrap();
    let (ok, out, err) = etcdctl_run(&endpoint, &["alarm", "list"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "memberID:9 alarm:NOSPACE");
    let (ok, _, err) = etcdctl_run(&endpoint, &["put", "k", "v"]).await;
    assert!(!ok);
    assert!(err.contains("database space exceeded"), "{err}");
    let (ok, out, err) = etcdctl_run(&endpoint, &["alarm", "disarm"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "memberID:9 alarm:NOSPACE");
    let (ok, out, err) = etcdctl_run(&endpoint, &["alarm", "list"]).await;
    assert!(ok && out.is_empty(), "{out} {err}");
    let (ok, out, err) = etcdctl_run(&endpoint, &["put", "k", "v"]).await;
    assert!(ok && out.trim() == "OK", "{out} {err}");
    r.shutdown().await;
}

#[tokio::test]
async fn hash_kv_is_stable_per_revision_and_tells_different_histories_apart() {
    let (r1, r2) = (Running::start().await, Running::start().await);
    let (mut kv1, mut kv2) = (r1.kv().await, r2.kv().await);
    let mut m1 = MaintenanceClient::new(r1.channel().await);
    let mut m2 = MaintenanceClient::new(r2.channel().await);
    let hash = |m: &mut MaintenanceClient<Channel>, revision| {
        let mut m = m.clone();
        async move {
            m.hash_kv(pb::HashKvRequest { revision })
                .await
                .map(|r| r.into_inner())
        }
    };
    for (k, v) in [("a", "1"), ("b", "2")] {
        put(&mut kv1, k, v).await;
        put(&mut kv2, k, v).await;
    }
    let at3 = hash(&mut m1, 3).await.unwrap();
    assert_eq!(at3.hash_revision, 3);
    assert_eq!(at3.header.as_ref().unwrap().revision, 3);
    assert_eq!(at3.header.as_ref().unwrap().member_id, MEMBER_ID);
    assert_eq!(hash(&mut m2, 3).await.unwrap().hash, at3.hash);
    // Same keys, one value differs: the histories differ from revision 4.
    put(&mut kv1, "a", "3").await;
    put(&mut kv2, "a", "4").await;
    let (now1, now2) = (
        hash(&mut m1, 0).await.unwrap(),
        hash(&mut m2, 0).await.unwrap(),
    );
    assert_eq!((now1.hash_revision, now2.hash_revision), (4, 4));
    assert_ne!(now1.hash, now2.hash);
    // An older revision hashes the same after later writes.
    assert_eq!(hash(&mut m1, 3).await.unwrap().hash, at3.hash);
    assert_ne!(hash(&mut m1, 2).await.unwrap().hash, at3.hash);
    let future = hash(&mut m1, 99).await.unwrap_err();
    assert_eq!(future.code(), Code::OutOfRange);
    kv1.compact(pb::CompactionRequest {
        revision: 3,
        physical: false,
    })
    .await
    .unwrap();
    let after = hash(&mut m1, 0).await.unwrap();
    assert_eq!(after.compact_revision, 3);
    let compacted = hash(&mut m1, 2).await.unwrap_err();
    assert_eq!(compacted.code(), Code::OutOfRange);
    assert!(hash(&mut m1, -1).await.is_err());
    r1.shutdown().await;
    r2.shutdown().await;
}

#[tokio::test]
async fn move_leader_hands_over_and_refuses_like_etcd() {
    let r = Running::start().await;
    let mut m = MaintenanceClient::new(r.channel().await);
    let unknown = m
        .move_leader(pb::MoveLeaderRequest { target_id: 99 })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert_eq!(unknown.message(), "etcdserver: bad leader transferee");
    let moved = m
        .move_leader(pb::MoveLeaderRequest { target_id: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.header.unwrap().member_id, MEMBER_ID);
    let s = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.leader, 2);
    // No longer the leader: asked again, this member refuses.
    let not_leader = m
        .move_leader(pb::MoveLeaderRequest { target_id: 3 })
        .await
        .unwrap_err();
    assert_eq!(not_leader.code(), Code::FailedPrecondition);
    assert_eq!(not_leader.message(), "etcdserver: not leader");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_move_leader_works_against_the_service() {
    let r = Running::start().await;
    let endpoint = r.addr.to_string();
    let (ok, out, err) = etcdctl_run(&endpoint, &["move-leader", "3"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Leadership transferred"), "{out}");
    let mut m = MaintenanceClient::new(r.channel().await);
    let s = m.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(s.leader, 3);
    r.shutdown().await;
}

#[tokio::test]
async fn snapshot_streams_a_backup_ending_with_its_sha256_as_etcd_does() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    for i in 0..20 {
        put(&mut kv, &format!("k{i}"), &"x".repeat(50_000)).await;
    }
    let mut m = MaintenanceClient::new(r.channel().await);
    let mut stream = m
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        messages.push(msg);
    }
    let bytes: Vec<u8> = messages.iter().flat_map(|m| m.blob.to_vec()).collect();
    let last = messages.last().unwrap();
    // etcdctl's check: the stream is 512-byte blocks and a 32-byte SHA-256
    // of them, sent last.
    assert_eq!(bytes.len() % 512, 32);
    assert_eq!(last.blob.len(), 32);
    assert_eq!(last.remaining_bytes, 0);
    assert!(
        messages[..messages.len() - 1]
            .iter()
            .all(|m| m.remaining_bytes > 0)
    );
    assert!(messages.len() > 3, "a 1 MB image comes in several messages");
    let (data, sha) = bytes.split_at(bytes.len() - 32);
    assert_eq!(
        ring::digest::digest(&ring::digest::SHA256, data).as_ref(),
        sha
    );
    let h = last.header.unwrap();
    assert_eq!(
        (h.cluster_id, h.member_id, h.revision),
        (CLUSTER_ID, MEMBER_ID, 21)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup");
    std::fs::write(&file, &bytes).unwrap();
    let s = crate::storage::read_backup(&file, |_| Ok(())).unwrap();
    assert_eq!((s.revision, s.total_keys), (21, 20));
    assert_eq!((s.cluster_id, s.member_id), (CLUSTER_ID, MEMBER_ID));

    // etcd answers Defragment with no header at all.
    let d = m.defragment(pb::DefragmentRequest {}).await.unwrap();
    assert_eq!(d.into_inner(), pb::DefragmentResponse::default());
    r.shutdown().await;
}

// ---- Lease ------------------------------------------------------------------

async fn grant(
    lease: &mut LeaseClient<Channel>,
    id: i64,
    ttl: i64,
) -> Result<pb::LeaseGrantResponse, tonic::Status> {
    lease
        .lease_grant(pb::LeaseGrantRequest { ttl, id })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_lease_is_granted_holds_keys_and_its_revoke_deletes_them_at_one_revision() {
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut lease = LeaseClient::new(r.channel().await);
    let g = grant(&mut lease, 0, 60).await.unwrap();
    assert_eq!(
        (g.id, g.ttl),
        (super::fake_backend::FIRST_LEASE_ID, 60),
        "id 0: the server picks one"
    );
    assert_eq!(g.header.unwrap().member_id, MEMBER_ID);
    for k in ["a", "b"] {
        kv.put(pb::PutRequest {
            key: b(k),
            value: b("v"),
            lease: g.id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let got = kv.range(get("a")).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].lease, g.id, "reads carry the lease");
    // prev_kv too, and a put with ignore_lease keeps the lease.
    let again = kv
        .put(pb::PutRequest {
            key: b("a"),
            value: b("w"),
            ignore_lease: true,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.prev_kv.unwrap().lease, g.id);
    assert_eq!(
        kv.range(get("a")).await.unwrap().into_inner().kvs[0].lease,
        g.id
    );

    let ttl = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ttl.id, ttl.granted_ttl), (g.id, 60));
    assert!(ttl.ttl > 0 && ttl.ttl <= 60, "{}", ttl.ttl);
    assert_eq!(ttl.keys, vec![b("a"), b("b")]);
    let listed = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![g.id]
    );

    let before = kv
        .range(get("a"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let revoked = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: g.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.header.unwrap().revision, before + 1, "one revision");
    for k in ["a", "b"] {
        assert_eq!(kv.range(get(k)).await.unwrap().into_inner().count, 0, "{k}");
    }
    let gone = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.ttl, -1, "an unknown lease has TTL -1");
    let err = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: g.id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    r.shutdown().await;
}

#[tokio::test]
async fn lease_grants_follow_etcds_rules() {
    let r = Running::start().await;
    let mut lease = LeaseClient::new(r.channel().await);
    let short = grant(&mut lease, 5, 1).await.unwrap();
    assert_eq!(
        (short.id, short.ttl),
        (5, super::fake_backend::MIN_LEASE_TTL),
        "a TTL below the minimum is raised to it"
    );
    let exists = grant(&mut lease, 5, 10).await.unwrap_err();
    assert_eq!(exists.code(), Code::FailedPrecondition);
    assert_eq!(exists.message(), "etcdserver: lease already exists");
    let huge = grant(&mut lease, 6, crate::storage::MAX_LEASE_TTL + 1)
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange);
    assert_eq!(huge.message(), "etcdserver: too large lease TTL");
    let mut kv = r.kv().await;
    let provided = kv
        .put(pb::PutRequest {
            key: b("a"),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(provided.code(), Code::InvalidArgument);
    assert_eq!(provided.message(), "etcdserver: lease is provided");
    r.shutdown().await;
}

#[tokio::test]
async fn keep_alives_are_answered_in_order_on_one_stream() {
    let r = Running::start().await;
    let mut lease = LeaseClient::new(r.channel().await);
    let g = grant(&mut lease, 9, 30).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::LeaseKeepAliveRequest { id: g.id })
        .await
        .unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert_eq!(
        (a.id, a.ttl),
        (9, 30),
        "a keep-alive answers the granted TTL"
    );
    tx.send(pb::LeaseKeepAliveRequest { id: 404 })
        .await
        .unwrap();
    let b = answers.message().await.unwrap().unwrap();
    assert_eq!((b.id, b.ttl), (404, 0), "an unknown lease has TTL 0");
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );

    // A failure (no leader) ends the stream with its status.
    r.backend.fail_with(Some(ClientError::NoLeader));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::LeaseKeepAliveRequest { id: 9 }).await.unwrap();
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    r.backend.fail_with(None);
    r.shutdown().await;
}

#[tokio::test]
async fn a_txn_compares_on_lease_and_puts_with_one() {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let r = Running::start().await;
    let mut kv = r.kv().await;
    let mut lease = LeaseClient::new(r.channel().await);
    let g = grant(&mut lease, 21, 30).await.unwrap();
    let put_leased = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: b("k"),
            value: b("v"),
            lease: g.id,
            ..Default::default()
        })),
    };
    let created = kv
        .txn(pb::TxnRequest {
            compare: vec![],
            success: vec![put_leased],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.succeeded);
    let on_lease = |id| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Lease as i32,
            key: b("k"),
            target_union: Some(TargetUnion::Lease(id)),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(kv.txn(on_lease(21)).await.unwrap().into_inner().succeeded);
    assert!(!kv.txn(on_lease(22)).await.unwrap().into_inner().succeeded);
    r.shutdown().await;
}
