package conformance

// Txn cases: compares of every target and result, nesting, duplicate keys,
// reads at a revision inside a transaction.

import (
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func opPut(key []byte, value string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: []byte(value)}}}
}

func opGet(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opDel(r *pb.DeleteRangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func txnCase(name string, setup func(e *env), req func(e *env) *pb.TxnRequest) {
	add(name, func(e *env) {
		setup(e)
		r, err := e.kv.Txn(e.ctx, req(e))
		e.rec("txn", r, err)
		g, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")})
		e.rec("after", g, err)
	})
}

// branches: on success writes "ok", on failure "ko", both then read it.
func branches(e *env, cmp ...*pb.Compare) *pb.TxnRequest {
	return &pb.TxnRequest{
		Compare: cmp,
		Success: []*pb.RequestOp{opPut(e.k("result"), "ok"), opGet(&pb.RangeRequest{Key: e.k("result")})},
		Failure: []*pb.RequestOp{opPut(e.k("result"), "ko"), opGet(&pb.RangeRequest{Key: e.k("result")})},
	}
}

func init() {
	ab := func(e *env) {
		e.put("a", "m")
		e.put("b", "x")
		e.put("a", "m") // a: version 2, create base+1, mod base+3
	}
	results := map[string]pb.Compare_CompareResult{
		"equal": pb.Compare_EQUAL, "greater": pb.Compare_GREATER,
		"less": pb.Compare_LESS, "not-equal": pb.Compare_NOT_EQUAL,
	}
	for _, rn := range []string{"equal", "greater", "less", "not-equal"} {
		result := results[rn]
		txnCase("txn/compare-value-"+rn, ab, func(e *env) *pb.TxnRequest {
			return branches(e, &pb.Compare{Key: e.k("a"), Result: result, Target: pb.Compare_VALUE,
				TargetUnion: &pb.Compare_Value{Value: []byte("l")}})
		})
		txnCase("txn/compare-version-"+rn, ab, func(e *env) *pb.TxnRequest {
			return branches(e, &pb.Compare{Key: e.k("a"), Result: result, Target: pb.Compare_VERSION,
				TargetUnion: &pb.Compare_Version{Version: 2}})
		})
	}
	txnCase("txn/compare-create", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("a"), Result: pb.Compare_EQUAL, Target: pb.Compare_CREATE,
			TargetUnion: &pb.Compare_CreateRevision{CreateRevision: e.rev(1)}})
	})
	txnCase("txn/compare-mod-less", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("a"), Result: pb.Compare_LESS, Target: pb.Compare_MOD,
			TargetUnion: &pb.Compare_ModRevision{ModRevision: e.rev(3)}})
	})
	txnCase("txn/compare-missing-key-version-0", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("zz"), Result: pb.Compare_EQUAL, Target: pb.Compare_VERSION,
			TargetUnion: &pb.Compare_Version{Version: 0}})
	})
	txnCase("txn/compare-missing-key-value", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("zz"), Result: pb.Compare_EQUAL, Target: pb.Compare_VALUE,
			TargetUnion: &pb.Compare_Value{Value: []byte("")}})
	})
	txnCase("txn/compare-range", ab, func(e *env) *pb.TxnRequest {
		// Every key in [a, c) must have create revision > base: true.
		return branches(e, &pb.Compare{Key: e.k("a"), RangeEnd: e.k("c"), Result: pb.Compare_GREATER,
			Target: pb.Compare_CREATE, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: e.rev(0)}})
	})
	txnCase("txn/compare-range-one-fails", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("a"), RangeEnd: e.k("c"), Result: pb.Compare_EQUAL,
			Target: pb.Compare_VALUE, TargetUnion: &pb.Compare_Value{Value: []byte("m")}})
	})
	txnCase("txn/compare-several-all-true", ab, func(e *env) *pb.TxnRequest {
		return branches(e,
			&pb.Compare{Key: e.k("a"), Result: pb.Compare_EQUAL, Target: pb.Compare_VALUE, TargetUnion: &pb.Compare_Value{Value: []byte("m")}},
			&pb.Compare{Key: e.k("b"), Result: pb.Compare_EQUAL, Target: pb.Compare_VERSION, TargetUnion: &pb.Compare_Version{Version: 1}})
	})
	leased := func(e *env) {
		_, err := e.lease.LeaseGrant(e.ctx, &pb.LeaseGrantRequest{ID: 0x2001, TTL: 60})
		e.must(err)
		_, err = e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k("a"), Value: []byte("v"), Lease: 0x2001})
		e.must(err)
	}
	txnCase("txn/compare-lease-equal", leased, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("a"), Result: pb.Compare_EQUAL, Target: pb.Compare_LEASE,
			TargetUnion: &pb.Compare_Lease{Lease: 0x2001}})
	})
	txnCase("txn/compare-lease-none", ab, func(e *env) *pb.TxnRequest {
		return branches(e, &pb.Compare{Key: e.k("a"), Result: pb.Compare_EQUAL, Target: pb.Compare_LEASE,
			TargetUnion: &pb.Compare_Lease{Lease: 0}})
	})
	txnCase("txn/empty", ab, func(e *env) *pb.TxnRequest { return &pb.TxnRequest{} })
	txnCase("txn/read-only", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{opGet(&pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")})}}
	})
	txnCase("txn/several-writes-one-revision", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut(e.k("c"), "1"), opPut(e.k("d"), "2"),
			opDel(&pb.DeleteRangeRequest{Key: e.k("b"), PrevKv: true}),
			opGet(&pb.RangeRequest{Key: e.k(""), RangeEnd: e.end("")}),
		}}
	})
	txnCase("txn/put-then-read-sees-it", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{
			opPut(e.k("a"), "new"), opGet(&pb.RangeRequest{Key: e.k("a")}),
		}}
	})
	txnCase("txn/nested", ab, func(e *env) *pb.TxnRequest {
		inner := &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: e.k("b"), Result: pb.Compare_EQUAL, Target: pb.Compare_VALUE,
				TargetUnion: &pb.Compare_Value{Value: []byte("x")}}},
			Success: []*pb.RequestOp{opPut(e.k("inner"), "yes")},
			Failure: []*pb.RequestOp{opPut(e.k("inner"), "no")},
		}
		return &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("outer"), "1"), opTxn(inner)}}
	})
	txnCase("txn/duplicate-put", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("c"), "1"), opPut(e.k("c"), "2")}}
	})
	txnCase("txn/put-and-delete-same-key", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("a"), "1"), opDel(&pb.DeleteRangeRequest{Key: e.k("a")})}}
	})
	txnCase("txn/put-inside-deleted-range", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{
			opDel(&pb.DeleteRangeRequest{Key: e.k(""), RangeEnd: e.end("")}), opPut(e.k("b"), "1"),
		}}
	})
	txnCase("txn/duplicate-in-other-branch-is-fine", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{
			Success: []*pb.RequestOp{opPut(e.k("c"), "1")},
			Failure: []*pb.RequestOp{opPut(e.k("c"), "2")},
		}
	})
	txnCase("txn/duplicate-in-nested", ab, func(e *env) *pb.TxnRequest {
		inner := &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("c"), "2")}}
		return &pb.TxnRequest{Success: []*pb.RequestOp{opPut(e.k("c"), "1"), opTxn(inner)}}
	})
	txnCase("txn/range-at-revision", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{
			opGet(&pb.RangeRequest{Key: e.k("a"), Revision: e.rev(1)}),
			opGet(&pb.RangeRequest{Key: e.k(""), RangeEnd: e.end(""), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD}),
		}}
	})
	txnCase("txn/range-future-revision", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{opGet(&pb.RangeRequest{Key: e.k("a"), Revision: e.rev(100)})}}
	})
	txnCase("txn/delete-prev-kv", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{opDel(&pb.DeleteRangeRequest{Key: e.k(""), RangeEnd: e.end(""), PrevKv: true})}}
	})
	txnCase("txn/too-many-ops", ab, func(e *env) *pb.TxnRequest {
		var ops []*pb.RequestOp
		for i := 0; i < 129; i++ {
			ops = append(ops, opPut(e.k(fmt.Sprintf("many%03d", i)), "v"))
		}
		return &pb.TxnRequest{Success: ops}
	})
	txnCase("txn/128-compares-and-128-ops", ab, func(e *env) *pb.TxnRequest {
		// The limit is per list (compares, success, failure), not their sum.
		var cmps []*pb.Compare
		var ops []*pb.RequestOp
		for i := 0; i < 128; i++ {
			cmps = append(cmps, &pb.Compare{Key: e.k("a"), Result: pb.Compare_EQUAL, Target: pb.Compare_VALUE,
				TargetUnion: &pb.Compare_Value{Value: []byte("m")}})
			ops = append(ops, opPut(e.k(fmt.Sprintf("many%03d", i)), "v"))
		}
		return &pb.TxnRequest{Compare: cmps, Success: ops, Failure: ops}
	})
	txnCase("txn/too-many-ops-nested", ab, func(e *env) *pb.TxnRequest {
		var ops []*pb.RequestOp
		for i := 0; i < 129; i++ {
			ops = append(ops, opPut(e.k(fmt.Sprintf("many%03d", i)), "v"))
		}
		return &pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: ops})}}
	})
	txnCase("txn/put-unknown-lease", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
			Key: e.k("c"), Value: []byte("v"), Lease: 0x7778}}}}}
	})
	txnCase("txn/put-ignore-value-missing-key", ab, func(e *env) *pb.TxnRequest {
		return &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
			Key: e.k("zz"), IgnoreValue: true}}}}}
	})
}
