package conformance

// Range, Put, DeleteRange and Compact cases.

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// five writes a..e with values that sort the other way round, a written
// twice, so that every sort target orders them differently.
func five(e *env) {
	e.put("c", "3")
	e.put("a", "5")
	e.put("e", "1")
	e.put("b", "4")
	e.put("d", "2")
	e.put("a", "6")
}

func rangeCase(name string, setup func(e *env), req func(e *env) *pb.RangeRequest) {
	add(name, func(e *env) {
		setup(e)
		r, err := e.kv.Range(e.ctx, req(e))
		e.rec("range", r, err)
	})
}

func init() {
	none := func(e *env) {}
	add("store/revision-of-a-new-store", func(e *env) {
		// First case of the run: one write (the readiness probe) after
		// start. etcd starts at revision 1, so this is 2.
		e.note("absolute revision", e.base)
	})
	rangeCase("range/missing-key", none, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("nothing")}
	})
	rangeCase("range/single-key", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("a")}
	})
	rangeCase("range/prefix", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")}
	})
	rangeCase("range/interval", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("b"), RangeEnd: e.k("d")}
	})
	rangeCase("range/end-before-key", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("d"), RangeEnd: e.k("b")}
	})
	rangeCase("range/from-key-count", five, func(e *env) *pb.RangeRequest {
		// range_end "\0": every key from this one on; count only, as later
		// cases' keys are not there yet but earlier ones sort before.
		return &pb.RangeRequest{Key: e.k("c"), RangeEnd: []byte{0}, CountOnly: true}
	})
	rangeCase("range/empty-key", none, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{}
	})
	rangeCase("range/limit", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Limit: 2}
	})
	rangeCase("range/limit-equal-count", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Limit: 5}
	})
	rangeCase("range/negative-limit", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Limit: -1}
	})
	targets := map[string]pb.RangeRequest_SortTarget{
		"key": pb.RangeRequest_KEY, "version": pb.RangeRequest_VERSION,
		"create": pb.RangeRequest_CREATE, "mod": pb.RangeRequest_MOD,
		"value": pb.RangeRequest_VALUE,
	}
	orders := map[string]pb.RangeRequest_SortOrder{
		"none": pb.RangeRequest_NONE, "asc": pb.RangeRequest_ASCEND, "desc": pb.RangeRequest_DESCEND,
	}
	for _, tn := range []string{"key", "version", "create", "mod", "value"} {
		for _, on := range []string{"none", "asc", "desc"} {
			target, order := targets[tn], orders[on]
			if tn == "key" && on == "none" {
				continue // the plain prefix case
			}
			rangeCase("range/sort-"+tn+"-"+on, five, func(e *env) *pb.RangeRequest {
				return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), SortOrder: order, SortTarget: target}
			})
		}
	}
	rangeCase("range/sort-mod-desc-limit", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), SortOrder: pb.RangeRequest_DESCEND,
			SortTarget: pb.RangeRequest_MOD, Limit: 2}
	})
	rangeCase("range/sort-value-asc-limit-count-only", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), SortOrder: pb.RangeRequest_ASCEND,
			SortTarget: pb.RangeRequest_VALUE, Limit: 2, CountOnly: true}
	})
	rangeCase("range/keys-only", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), KeysOnly: true}
	})
	rangeCase("range/count-only", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), CountOnly: true}
	})
	rangeCase("range/count-only-limit", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), CountOnly: true, Limit: 1}
	})
	rangeCase("range/serializable", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Serializable: true}
	})
	rangeCase("range/min-mod-revision", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), MinModRevision: e.rev(4)}
	})
	rangeCase("range/max-mod-revision", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), MaxModRevision: e.rev(3)}
	})
	rangeCase("range/min-create-revision", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), MinCreateRevision: e.rev(3)}
	})
	rangeCase("range/max-create-revision-limit", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), MaxCreateRevision: e.rev(2), Limit: 1}
	})
	rangeCase("range/at-past-revision", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), Revision: e.rev(3)}
	})
	rangeCase("range/at-revision-before-delete", func(e *env) {
		e.put("x", "1")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("x")})
		e.must(err)
	}, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("x"), Revision: e.rev(1)}
	})
	rangeCase("range/future-revision", none, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("x"), Revision: e.rev(100)}
	})
	rangeCase("range/current-revision", five, func(e *env) *pb.RangeRequest {
		return &pb.RangeRequest{Key: e.k("a"), Revision: e.rev(6)}
	})

	// Put.
	add("put/new-key", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("1")})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})
	add("put/versions", func(e *env) {
		for _, v := range []string{"1", "2", "3"} {
			r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte(v)})
			e.rec("put", r, err)
		}
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})
	add("put/prev-kv", func(e *env) {
		e.put("a", "old")
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("new"), PrevKv: true})
		e.rec("put", r, err)
	})
	add("put/prev-kv-missing", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("new"), PrevKv: true})
		e.rec("put", r, err)
	})
	add("put/empty-value", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a")})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})
	add("put/empty-key", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Value: []byte("v")})
		e.rec("put", r, err)
	})
	add("put/ignore-value", func(e *env) {
		e.put("a", "kept")
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), IgnoreValue: true, PrevKv: true})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})
	add("put/ignore-value-missing-key", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), IgnoreValue: true})
		e.rec("put", r, err)
	})
	add("put/ignore-value-with-value", func(e *env) {
		e.put("a", "kept")
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("x"), IgnoreValue: true})
		e.rec("put", r, err)
	})
	add("put/with-lease", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x1001, TTL: 60})
		e.must(err)
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x1001})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
		_, err = e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x1001})
		e.must(err)
	})
	add("put/ignore-lease", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x1002, TTL: 60})
		e.must(err)
		_, err = e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x1002})
		e.must(err)
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("w"), IgnoreLease: true})
		e.rec("put", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
		_, err = e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x1002})
		e.must(err)
	})
	add("put/ignore-lease-missing-key", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), IgnoreLease: true})
		e.rec("put", r, err)
	})
	add("put/ignore-lease-with-lease", func(e *env) {
		e.put("a", "v")
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), IgnoreLease: true, Lease: 7})
		e.rec("put", r, err)
	})
	add("put/unknown-lease", func(e *env) {
		r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x7777})
		e.rec("put", r, err)
	})
	add("put/overwrite-without-lease-detaches", func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x1003, TTL: 60})
		e.must(err)
		_, err = e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x1003})
		e.must(err)
		e.put("a", "w")
		_, err = e.lease.LeaseRevoke(e.ctx, &pb.LeaseRevokeRequest{ID: 0x1003})
		e.must(err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get after revoke", g, err)
	})

	// DeleteRange.
	add("delete/single", func(e *env) {
		e.put("a", "1")
		r, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.rec("delete", r, err)
	})
	add("delete/missing", func(e *env) {
		r, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a"), PrevKv: true})
		e.rec("delete", r, err)
	})
	add("delete/prefix-prev-kv", func(e *env) {
		five(e)
		r, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k(""), RangeEnd: e.end(""), PrevKv: true})
		e.rec("delete", r, err)
	})
	add("delete/interval", func(e *env) {
		five(e)
		r, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("b"), RangeEnd: e.k("d")})
		e.rec("delete", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), KeysOnly: true})
		e.rec("left", g, err)
	})
	add("delete/empty-key", func(e *env) {
		r, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{})
		e.rec("delete", r, err)
	})
	add("delete/recreate-resets-version", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		_, err := e.kv.DeleteRange(e.ctx, &pb.DeleteRangeRequest{Key: e.k("a")})
		e.must(err)
		e.put("a", "3")
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})

	// Compact: run last among the KV cases would not matter, each case
	// reads only revisions from its own start on.
	add("compact/then-read-below", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(2)})
		e.rec("compact", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), Revision: e.rev(1)})
		e.rec("read below", g, err)
		g, err = e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a"), Revision: e.rev(2)})
		e.rec("read at", g, err)
	})
	add("compact/physical", func(e *env) {
		e.put("a", "1")
		e.put("a", "2")
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(1), Physical: true})
		e.rec("compact", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k("a")})
		e.rec("get", g, err)
	})
	add("compact/again-same-revision", func(e *env) {
		e.put("a", "1")
		_, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(1)})
		e.must(err)
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(1)})
		e.rec("compact", r, err)
	})
	add("compact/future-revision", func(e *env) {
		r, err := e.kv.Compact(e.ctx, &pb.CompactionRequest{Revision: e.rev(100)})
		e.rec("compact", r, err)
	})
}
