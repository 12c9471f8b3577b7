package conformance

// Watch, Lease and Maintenance cases.

import (
	"context"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/grpc/metadata"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// watcher is one raw Watch stream of a case.
type watcher struct {
	e      *env
	stream pb.Watch_WatchClient
}

func (e *env) watcher() *watcher {
	s, err := e.watch.Watch(e.ctx)
	e.must(err)
	return &watcher{e, s}
}

func (w *watcher) send(r *pb.WatchRequest) {
	w.e.must(w.stream.Send(r))
}

func (w *watcher) create(c *pb.WatchCreateRequest) {
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: c}})
}

// expect receives until it has seen `events` events and `others`
// responses without events, and records them: the responses without
// events one by one (created, canceled, progress), the events of
// consecutive responses merged, because how a server batches events into
// responses is its own choice.
func (w *watcher) expect(label string, others, events int) {
	var out []any
	var batch []*mvccpb.Event
	var batchIDs []int64
	flush := func() {
		if batch != nil {
			out = append(out, map[string]any{"events": batch, "watch_ids": batchIDs})
			batch, batchIDs = nil, nil
		}
	}
	for others > 0 || events > 0 {
		r, err := w.stream.Recv()
		if err != nil {
			w.e.rec(label, out, err)
			return
		}
		if len(r.Events) == 0 {
			flush()
			out = append(out, r)
			others--
			continue
		}
		batch = append(batch, r.Events...)
		if len(batchIDs) == 0 || batchIDs[len(batchIDs)-1] != r.WatchId {
			batchIDs = append(batchIDs, r.WatchId)
		}
		events -= len(r.Events)
	}
	flush()
	w.e.note(label, out)
}

func init() {
	add("watch/key-live", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a")})
		w.expect("created", 1, 0)
		e.put("a", "1")
		e.put("b", "1")
		e.put("a", "2")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		w.expect("events", 0, 3)
	})
	add("watch/prefix-live", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("p/"), RangeEnd: e.end("p/")})
		w.expect("created", 1, 0)
		e.put("p/a", "1")
		e.put("q", "1")
		e.put("p/b", "2")
		w.expect("events", 0, 2)
	})
	add("watch/interval", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("b"), RangeEnd: e.k("d")})
		w.expect("created", 1, 0)
		five(e)
		w.expect("events", 0, 2)
	})
	add("watch/from-past-revision", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		e.put("a", "3")
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), StartRevision: e.rev(2)})
		w.expect("created and history", 1, 2)
		e.put("a", "4")
		w.expect("live", 0, 1)
	})
	add("watch/from-future-revision", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k(""), RangeEnd: e.end(""), StartRevision: e.rev(3)})
		w.expect("created", 1, 0)
		five(e)
		w.expect("events", 0, 4)
	})
	add("watch/prev-kv", func(e *env) {
		e.put("a", "1")
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), PrevKv: true})
		w.expect("created", 1, 0)
		e.put("a", "2")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		w.expect("events", 0, 2)
	})
	add("watch/prev-kv-from-history", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), PrevKv: true, StartRevision: e.rev(1)})
		w.expect("created and history", 1, 2)
	})
	add("watch/filter-noput", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}})
		w.expect("created", 1, 0)
		e.put("a", "1")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		w.expect("events", 0, 1)
	})
	add("watch/filter-nodelete", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}})
		w.expect("created", 1, 0)
		e.put("a", "1")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		e.put("a", "2")
		w.expect("events", 0, 2)
	})
	add("watch/txn-events-one-revision", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k(""), RangeEnd: e.end("")})
		w.expect("created", 1, 0)
		_, err := e.kv.Txn(e.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("a"), "1"), opPut(e.k("b"), "2")}})
		e.must(err)
		w.expect("events", 0, 2)
	})
	add("watch/progress-request", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a")})
		w.expect("created", 1, 0)
		e.put("b", "1")
		w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
		w.expect("progress", 1, 0)
	})
	add("watch/cancel", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a")})
		w.expect("created", 1, 0)
		w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 0}}})
		w.expect("canceled", 1, 0)
	})
	add("watch/two-watchers-one-stream", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a")})
		w.expect("created a", 1, 0)
		w.create(&pb.WatchCreateRequest{Key: e.k("b")})
		w.expect("created b", 1, 0)
		e.put("b", "1")
		w.expect("b", 0, 1)
		e.put("a", "1")
		w.expect("a", 0, 1)
	})
	add("watch/client-chosen-id", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), WatchId: 7})
		w.expect("created", 1, 0)
		e.put("a", "1")
		w.expect("events", 0, 1)
	})
	add("watch/duplicate-id", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), WatchId: 7})
		w.expect("created", 1, 0)
		w.create(&pb.WatchCreateRequest{Key: e.k("b"), WatchId: 7})
		w.expect("second", 1, 0)
	})
	add("watch/compacted", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		e.put("a", "3")
		_, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(2)})
		e.must(err)
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), StartRevision: e.rev(1)})
		w.expect("created and canceled", 2, 0)
	})
	add("watch/at-compaction-revision", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		_, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(2)})
		e.must(err)
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("a"), StartRevision: e.rev(2)})
		w.expect("created and history", 1, 1)
	})

	// Lease. Ids are chosen by the client so that answers compare; TTLs
	// are long, so that nothing expires during the run.
	add("lease/grant-explicit-id", func(e *env) {
		r, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3001, TTL: 3600})
		e.rec("grant", r, err)
	})
	add("lease/grant-duplicate-id", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3002, TTL: 3600})
		e.must(err)
		r, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3002, TTL: 3600})
		e.rec("grant again", r, err)
	})
	add("lease/grant-server-chosen-id", func(e *env) {
		r, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{TTL: 3600})
		if r != nil {
			e.note("id chosen", r.ID > 0)
			r.ID = 0
		}
		e.rec("grant", r, err)
	})
	add("lease/grant-ttl-too-large", func(e *env) {
		r, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3003, TTL: 9_000_000_001})
		e.rec("grant", r, err)
	})
	add("lease/time-to-live-with-keys", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3004, TTL: 3600})
		e.must(err)
		for _, k := range []string{"b", "a"} {
			_, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k(k), Value: []byte("v"), Lease: 0x3004})
			e.must(err)
		}
		r, err := e.lease.LeaseTimeToLive(e.ctx, &pb.LeaseTimeToLiveRequest{ID: 0x3004, Keys: true})
		if r != nil {
			// Seconds left depend on when it is asked; keys come in no
			// promised order.
			e.note("ttl in (3590, 3600]", r.TTL > 3590 && r.TTL <= 3600)
			r.TTL = 0
			sort.Slice(r.Keys, func(i, j int) bool { return string(r.Keys[i]) < string(r.Keys[j]) })
		}
		e.rec("ttl", r, err)
	})
	add("lease/time-to-live-unknown", func(e *env) {
		r, err := e.lease.LeaseTimeToLive(e.ctx, &pb.LeaseTimeToLiveRequest{ID: 0x3fff})
		e.rec("ttl", r, err)
	})
	add("lease/revoke-deletes-keys", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3005, TTL: 3600})
		e.must(err)
		for _, k := range []string{"a", "b"} {
			_, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k(k), Value: []byte("v"), Lease: 0x3005})
			e.must(err)
		}
		e.put("c", "not leased")
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k(""), RangeEnd: e.end("")})
		w.expect("created", 1, 0)
		r, err := e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x3005})
		e.rec("revoke", r, err)
		w.expect("deletes", 0, 2)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")})
		e.rec("left", g, err)
		t, err := e.lease.LeaseTimeToLive(e.ctx, &pb.LeaseTimeToLiveRequest{ID: 0x3005})
		e.rec("ttl after", t, err)
	})
	add("lease/revoke-unknown", func(e *env) {
		r, err := e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x3ffe})
		e.rec("revoke", r, err)
	})
	add("lease/revoke-twice", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3006, TTL: 3600})
		e.must(err)
		_, err = e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x3006})
		e.must(err)
		r, err := e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x3006})
		e.rec("revoke again", r, err)
	})
	add("lease/keepalive", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x3007, TTL: 3600})
		e.must(err)
		s, err := e.lease.LeaseKeepAlive(e.ctx)
		e.must(err)
		e.must(s.Send(&pb.LeaseKeepAliveRequest{ID: 0x3007}))
		r, err := s.Recv()
		e.rec("keepalive", r, err)
		e.must(s.Send(&pb.LeaseKeepAliveRequest{ID: 0x3ffd}))
		r, err = s.Recv()
		e.rec("keepalive unknown", r, err)
	})
	add("lease/leases-list", func(e *env) {
		for _, id := range []int64{0x3009, 0x3008} {
			_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: id, TTL: 3600})
			e.must(err)
		}
		r, err := e.lease.LeaseLeases(e.ctx, &pb.LeaseLeasesRequest{})
		if r != nil {
			// Only this case's leases, in order: others come from other
			// cases, or from the server's own choice of ids.
			var mine []*pb.LeaseStatus
			for _, l := range r.Leases {
				if l.ID == 0x3008 || l.ID == 0x3009 {
					mine = append(mine, l)
				}
			}
			sort.Slice(mine, func(i, j int) bool { return mine[i].ID < mine[j].ID })
			r.Leases = mine
		}
		e.rec("leases", r, err)
	})
	add("lease/attach-to-revoked-lease", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x300a, TTL: 3600})
		e.must(err)
		_, err = e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x300a})
		e.must(err)
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x300a})
		e.rec("put", r, err)
	})

	// Maintenance: figures differ by design (sizes, indexes, versions);
	// which are filled in must not.
	add("maintenance/status-fields", func(e *env) {
		r, err := e.maint.Status(e.ctx, &pb.StatusRequest{})
		if err != nil {
			e.rec("status", nil, err)
			return
		}
		e.note("status", map[string]bool{
			"version":          r.Version != "",
			"dbSize":           r.DbSize > 0,
			"dbSizeInUse":      r.DbSizeInUse > 0 && r.DbSizeInUse <= r.DbSize,
			"leader":           r.Leader != 0,
			"raftIndex":        r.RaftIndex > 0,
			"raftTerm":         r.RaftTerm > 0,
			"raftAppliedIndex": r.RaftAppliedIndex > 0 && r.RaftAppliedIndex <= r.RaftIndex,
			"errors":           len(r.Errors) > 0,
			"isLearner":        r.IsLearner,
			"dbSizeQuota":      r.DbSizeQuota > 0,
			"header.revision":  r.Header != nil && r.Header.Revision == e.base,
			"header.member_id": r.Header != nil && r.Header.MemberId != 0,
			"header.raft_term": r.Header != nil && r.Header.RaftTerm == r.RaftTerm,
			"downgradeInfo":    r.DowngradeInfo != nil && !r.DowngradeInfo.Enabled,
		})
	})
	add("maintenance/status-storage-version", func(e *env) {
		r, err := e.maint.Status(e.ctx, &pb.StatusRequest{})
		if err != nil {
			e.rec("status", nil, err)
			return
		}
		e.note("storageVersion set", r.StorageVersion != "")
	})
	add("maintenance/alarm-list", func(e *env) {
		r, err := e.maint.Alarm(e.ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
		e.rec("alarms", r, err)
	})
	add("maintenance/hashkv-same-on-every-member", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		var hashes []uint32
		for i, m := range e.s.members {
			// Every member has applied the writes once a linearizable read
			// through it has answered.
			_, err := pb.NewKVClient(m).Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
			e.must(err)
			r, err := pb.NewMaintenanceClient(m).HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(2)})
			if err != nil {
				e.rec("hashkv", nil, err)
				return
			}
			hashes = append(hashes, r.Hash)
			if i == 0 {
				r.Hash = 0
				e.rec("hashkv", r, nil)
			}
		}
		same := true
		for _, h := range hashes {
			same = same && h == hashes[0] && h != 0
		}
		e.note("same nonzero hash on every member", same)
	})
	add("maintenance/hashkv-changes-with-writes", func(e *env) {
		e.put("a", "1")
		r1, err := e.maint.HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(1)})
		e.must(err)
		e.put("a", "2")
		r2, err := e.maint.HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(2)})
		e.must(err)
		r3, err := e.maint.HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(1)})
		e.must(err)
		e.note("differs after a write", r1.Hash != r2.Hash)
		e.note("same again at the same revision", r1.Hash == r3.Hash)
	})
	add("maintenance/hashkv-future-revision", func(e *env) {
		r, err := e.maint.HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(100)})
		e.rec("hashkv", r, err)
	})
	add("maintenance/hashkv-compacted-revision", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		_, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(2)})
		e.must(err)
		r, err := e.maint.HashKV(e.ctx, &pb.HashKVRequest{Revision: e.rev(1)})
		e.rec("hashkv", r, err)
	})
	auth := func(e *env) pb.AuthClient { return pb.NewAuthClient(e.s.leader) }
	add("auth/status", func(e *env) {
		r, err := auth(e).AuthStatus(e.ctx, &pb.AuthStatusRequest{})
		e.rec("auth status", r, err)
	})
	add("auth/authenticate-while-disabled", func(e *env) {
		r, err := auth(e).Authenticate(e.ctx, &pb.AuthenticateRequest{Name: "root", Password: "x"})
		e.rec("authenticate", r, err)
	})
	add("auth/user-and-role-lists", func(e *env) {
		u, err := auth(e).UserList(e.ctx, &pb.AuthUserListRequest{})
		e.rec("users", u, err)
		r, err := auth(e).RoleList(e.ctx, &pb.AuthRoleListRequest{})
		e.rec("roles", r, err)
	})
	add("auth/disable-while-disabled", func(e *env) {
		r, err := auth(e).AuthDisable(e.ctx, &pb.AuthDisableRequest{})
		e.rec("disable", r, err)
	})
	add("auth/user-add", func(e *env) {
		r, err := auth(e).UserAdd(e.ctx, &pb.AuthUserAddRequest{Name: "conformance", Password: "x"})
		e.rec("user add", r, err)
		if err == nil {
			// Leave etcd as it was for the other cases.
			_, err := auth(e).UserDelete(e.ctx, &pb.AuthUserDeleteRequest{Name: "conformance"})
			e.must(err)
		}
	})
	// The whole auth flow, left disabled and empty again for the other
	// cases: the errors of each step, then a user with a prefix role
	// allowed and refused. Tokens differ by design (etcd's simple tokens,
	// raftkv's signed ones), so only whether one was handed out is noted.
	add("auth/enable-users-roles-and-permissions", func(e *env) {
		a := auth(e)
		r, err := a.AuthEnable(e.ctx, &pb.AuthEnableRequest{})
		e.rec("enable without root", r, err)
		_, err = a.UserAdd(e.ctx, &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"})
		e.must(err)
		r, err = a.AuthEnable(e.ctx, &pb.AuthEnableRequest{})
		e.rec("enable without the root role", r, err)
		for _, step := range []func() (any, error){
			func() (any, error) { return a.RoleAdd(e.ctx, &pb.AuthRoleAddRequest{Name: "root"}) },
			func() (any, error) {
				return a.UserGrantRole(e.ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"})
			},
			func() (any, error) { return a.RoleAdd(e.ctx, &pb.AuthRoleAddRequest{Name: "app"}) },
			func() (any, error) {
				return a.RoleGrantPermission(e.ctx, &pb.AuthRoleGrantPermissionRequest{Name: "app",
					Perm: &authpb.Permission{PermType: authpb.READWRITE, Key: e.k("app/"), RangeEnd: e.end("app/")}})
			},
			func() (any, error) {
				return a.UserAdd(e.ctx, &pb.AuthUserAddRequest{Name: "alice", Password: "alicepw"})
			},
			func() (any, error) {
				return a.UserGrantRole(e.ctx, &pb.AuthUserGrantRoleRequest{User: "alice", Role: "app"})
			},
		} {
			resp, err := step()
			e.rec("setup", resp, err)
		}
		ro, err := a.RoleGet(e.ctx, &pb.AuthRoleGetRequest{Role: "app"})
		e.rec("role get", ro, err)
		u, err := a.UserGet(e.ctx, &pb.AuthUserGetRequest{Name: "alice"})
		e.rec("user get", u, err)
		r, err = a.AuthEnable(e.ctx, &pb.AuthEnableRequest{})
		e.rec("enable", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("app/x")})
		e.rec("get without a token", g, err)
		t, err := a.Authenticate(e.ctx, &pb.AuthenticateRequest{Name: "alice", Password: "wrong"})
		e.rec("wrong password", t, err)
		login := func(name, pw string) string {
			t, err := a.Authenticate(e.ctx, &pb.AuthenticateRequest{Name: name, Password: pw})
			e.must(err)
			e.note("token handed out", t.Token != "")
			return t.Token
		}
		as := func(token string) context.Context {
			return metadata.AppendToOutgoingContext(e.ctx, "token", token)
		}
		alice := as(login("alice", "alicepw"))
		p, err := e.kv.Put(alice, &pb.PutRequest{Key: e.k("app/x"), Value: []byte("v")})
		e.rec("put in the prefix", p, err)
		g, err = e.kv.Range(alice, &pb.RangeRequest{Key: e.k("app/"), RangeEnd: e.end("app/")})
		e.rec("get the prefix", g, err)
		p, err = e.kv.Put(alice, &pb.PutRequest{Key: e.k("other"), Value: []byte("v")})
		e.rec("put outside the prefix", p, err)
		g, err = e.kv.Range(alice, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")})
		e.rec("get a range wider than the prefix", g, err)
		ul, err := a.UserList(alice, &pb.AuthUserListRequest{})
		e.rec("user list as alice", ul, err)
		g, err = e.kv.Range(as("not-a-token"), &pb.RangeRequest{Key: e.k("app/x")})
		e.rec("get with a bad token", g, err)
		root := as(login("root", "rootpw"))
		d, err := a.UserDelete(root, &pb.AuthUserDeleteRequest{Name: "root"})
		e.rec("delete root while enabled", d, err)
		dis, err := a.AuthDisable(root, &pb.AuthDisableRequest{})
		e.rec("disable", dis, err)
		for _, name := range []string{"alice", "root"} {
			_, err := a.UserDelete(e.ctx, &pb.AuthUserDeleteRequest{Name: name})
			e.must(err)
		}
		for _, name := range []string{"app", "root"} {
			_, err := a.RoleDelete(e.ctx, &pb.AuthRoleDeleteRequest{Role: name})
			e.must(err)
		}
	})
	add("maintenance/defragment", func(e *env) {
		r, err := e.maint.Defragment(e.ctx, &pb.DefragmentRequest{})
		e.rec("defragment", r, err)
	})
}
