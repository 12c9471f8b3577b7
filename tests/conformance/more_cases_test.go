package conformance

// Edge cases: limits, odd revisions, alarms.

import (
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func init() {
	add("put/key-2KiB", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k(strings.Repeat("k", 2048)), Value: []byte("v")})
		e.rec("put", r, err)
	})
	add("put/value-1MiB", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte(strings.Repeat("v", 1<<20))})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), KeysOnly: true})
		e.rec("get", g, err)
	})
	add("put/prev-kv-after-delete", func(e *env) {
		e.put("a", "1")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("2"), PrevKv: true})
		e.rec("put", r, err)
	})
	add("range/negative-revision", func(e *env) {
		five(e)
		r, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), Revision: -1})
		e.rec("range", r, err)
	})
	add("range/end-equals-key", func(e *env) {
		five(e)
		r, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), RangeEnd: e.k("a")})
		e.rec("range", r, err)
	})
	add("range/count-only-at-revision", func(e *env) {
		five(e)
		r, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Revision: e.rev(2), CountOnly: true})
		e.rec("range", r, err)
	})
	add("range/deleted-key-at-revision-and-now", func(e *env) {
		five(e)
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("c")})
		e.must(err)
		r, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Revision: e.rev(6)})
		e.rec("before", r, err)
		r, err = e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), KeysOnly: true})
		e.rec("now", r, err)
	})
	add("compact/revision-0", func(e *env) {
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: 0})
		e.rec("compact", r, err)
	})
	add("compact/current-revision-then-read-it", func(e *env) {
		e.put("a", "1")
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(1)})
		e.rec("compact", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), Revision: e.rev(1)})
		e.rec("read at", g, err)
	})
	add("txn/compare-empty-key", func(e *env) {
		r, err := e.kv.Txn(e.ctx, &pb.TxnRequest{Compare: []*pb.Compare{{Result: pb.Compare_EQUAL,
			Target: pb.Compare_VERSION, TargetUnion: &pb.Compare_Version{Version: 0}}}})
		e.rec("txn", r, err)
	})
	add("txn/compare-mod-missing-key", func(e *env) {
		r, err := e.kv.Txn(e.ctx, branches(e, &pb.Compare{Key: e.k("zz"), Result: pb.Compare_EQUAL,
			Target: pb.Compare_MOD, TargetUnion: &pb.Compare_ModRevision{ModRevision: 0}}))
		e.rec("txn", r, err)
	})
	add("txn/empty-request-op", func(e *env) {
		r, err := e.kv.Txn(e.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{}}})
		e.rec("txn", r, err)
	})
	add("txn/range-compacted-revision", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		_, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(2)})
		e.must(err)
		r, err := e.kv.Txn(e.ctx, &pb.TxnRequest{Success: []*pb.RequestOp{opGet(&pb.RangeRequest{Key: e.k("a"), Revision: e.rev(1)})}})
		e.rec("txn", r, err)
	})
	add("watch/from-key", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k("b"), RangeEnd: []byte{0}})
		w.expect("created", 1, 0)
		five(e)
		w.expect("events", 0, 4)
	})
	add("watch/history-prefix-prev-kv-deletes", func(e *env) {
		five(e)
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k(""), RangeEnd: e.end("")})
		e.must(err)
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{Key: e.k(""), RangeEnd: e.end(""), StartRevision: e.rev(1), PrevKv: true})
		w.expect("created and history", 1, 11)
	})
	add("watch/empty-key", func(e *env) {
		w := e.watcher()
		w.create(&pb.WatchCreateRequest{})
		w.expect("answer", 1, 0)
	})
	add("lease/time-to-live-no-keys", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x300b, TTL: 3600})
		e.must(err)
		r, err := e.lease.LeaseTimeToLive(e.ctx, &pb.LeaseTimeToLiveRequest{ID: 0x300b, Keys: true})
		if r != nil {
			e.note("ttl in (3590, 3600]", r.TTL > 3590 && r.TTL <= 3600)
			r.TTL = 0
		}
		e.rec("ttl", r, err)
	})
	add("lease/revoke-many-keys-one-revision", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x300c, TTL: 3600})
		e.must(err)
		for _, k := range []string{"a", "b", "c", "d"} {
			_, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k(k), Value: []byte("v"), Lease: 0x300c})
			e.must(err)
		}
		r, err := e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x300c})
		e.rec("revoke", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Revision: e.rev(5)})
		e.rec("just before", g, err)
	})
	add("lease/grant-negative-id", func(e *env) {
		r, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: -5, TTL: 3600})
		e.rec("grant", r, err)
	})
	add("maintenance/alarm-nospace-refuses-writes", func(e *env) {
		st, err := e.maint.Status(e.ctx, &pb.StatusRequest{})
		e.must(err)
		member := st.Header.MemberId
		r, err := e.maint.Alarm(e.ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: member, Alarm: pb.AlarmType_NOSPACE})
		e.rec("raise", r, err)
		p, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v")})
		e.rec("put", p, err)
		d, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.rec("delete", d, err)
		l, err := e.maint.Alarm(e.ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
		e.rec("list", l, err)
		r, err = e.maint.Alarm(e.ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: member, Alarm: pb.AlarmType_NOSPACE})
		e.rec("disarm", r, err)
		p, err = e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v")})
		e.rec("put after", p, err)
	})
	add("maintenance/alarm-disarm-none", func(e *env) {
		r, err := e.maint.Alarm(e.ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: 1, Alarm: pb.AlarmType_NOSPACE})
		e.rec("disarm", r, err)
	})
}
