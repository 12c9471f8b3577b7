// Package conformance runs the same requests against a real etcd and
// against raftkv and compares the answers after normalizing what may
// legitimately differ (member and cluster ids, raft terms, server-chosen
// lease ids, database sizes, versions). Each case is either identical on
// both, or divergent for a reason written down in divergences.txt; an
// unexplained divergence, or an explained one that no longer diverges,
// fails the test.
//
// It needs both servers' binaries, CONFORMANCE_ETCD_BIN (etcd 3.6) and
// RAFTKV_BIN, and etcdctl 3.6 in CONFORMANCE_ETCDCTL_BIN. tests/conformance/run provides them; without them it is
// skipped.
package conformance

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/status"
)

// env is what a case runs with on one server.
type env struct {
	t      *testing.T
	ctx    context.Context
	s      *server
	kv     pb.KVClient
	lease  pb.LeaseClient
	watch  pb.WatchClient
	maint  pb.MaintenanceClient
	prefix string // every key of the case starts with it
	base   int64  // the store's revision before the case began
	log    []any  // what the case saw, in order
}

// k is a key of the case.
func (e *env) k(name string) []byte { return []byte(e.prefix + name) }

// end is the range end covering every key of the case that starts with name.
func (e *env) end(name string) []byte { return []byte(clientv3.GetPrefixRangeEnd(e.prefix + name)) }

// rev is a revision relative to the case's start, as an absolute one.
func (e *env) rev(delta int64) int64 { return e.base + delta }

// rec records one answer (or error) under a label.
func (e *env) rec(label string, resp any, err error) {
	if err != nil {
		st, _ := status.FromError(err)
		e.log = append(e.log, map[string]any{label: map[string]any{
			"error": map[string]any{"code": st.Code().String(), "message": st.Message()},
		}})
		return
	}
	e.log = append(e.log, map[string]any{label: resp})
}

// note records a value the case computed itself.
func (e *env) note(label string, v any) { e.log = append(e.log, map[string]any{label: v}) }

// must fails the case's setup step on an error: setup is not what is compared.
func (e *env) must(err error) {
	if err != nil {
		e.t.Fatalf("%s: setup step failed: %v", e.s.name, err)
	}
}

func (e *env) put(key, value string) *pb.PutResponse {
	r, err := e.kv.Put(e.ctx, &pb.PutRequest{Key: e.k(key), Value: []byte(value)})
	e.must(err)
	return r
}

func (e *env) revision() int64 {
	r, err := e.kv.Range(e.ctx, &pb.RangeRequest{Key: []byte("/ready")})
	e.must(err)
	return r.Header.Revision
}

type kase struct {
	name string
	run  func(e *env)
}

var cases []kase

func add(name string, run func(e *env)) { cases = append(cases, kase{name, run}) }

// normalize turns an answer into comparable JSON: header ids and terms
// shown only as set or not (a header with none is not the same as one
// with them), revisions made relative to the case's start, keys and
// values shown as text.
func normalize(v any, base int64) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var tree any
	if err := json.Unmarshal(b, &tree); err != nil {
		return "", err
	}
	tree = walk(tree, base)
	out, err := json.MarshalIndent(tree, "", " ")
	return string(out), err
}

var ids = map[string]bool{"cluster_id": true, "member_id": true, "raft_term": true, "memberID": true}
var revisions = map[string]bool{
	"revision": true, "create_revision": true, "mod_revision": true,
	"compact_revision": true, "hash_revision": true,
}
var bytesFields = map[string]bool{"key": true, "value": true, "range_end": true}

func walk(v any, base int64) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, val := range x {
			switch {
			case ids[k]:
				if n, ok := val.(float64); ok && n != 0 {
					out[k] = "(set)"
					continue
				}
			case revisions[k]:
				if n, ok := val.(float64); ok && n > 0 {
					out[k] = fmt.Sprintf("base%+d", int64(n)-base)
					continue
				}
			case bytesFields[k]:
				if s, ok := val.(string); ok {
					if raw, err := base64.StdEncoding.DecodeString(s); err == nil && utf8.Valid(raw) {
						out[k] = string(raw)
						continue
					}
				}
			}
			out[k] = walk(val, base)
		}
		return out
	case []any:
		for i := range x {
			x[i] = walk(x[i], base)
		}
		return x
	}
	return v
}

// readDivergences reads divergences.txt: "case-name: reason" lines.
func readDivergences(t *testing.T) map[string]string {
	f, err := os.Open("divergences.txt")
	if err != nil {
		t.Fatalf("divergences.txt: %v", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, reason, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(reason) == "" {
			t.Fatalf("divergences.txt: %q has no reason", line)
		}
		out[strings.TrimSpace(name)] = strings.TrimSpace(reason)
	}
	return out
}

func runCase(t *testing.T, s *server, c kase) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := s.leader
	e := &env{
		t: t, ctx: ctx, s: s,
		kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn),
		watch: pb.NewWatchClient(conn), maint: pb.NewMaintenanceClient(conn),
		prefix: "/c/" + c.name + "/",
	}
	e.base = e.revision()
	c.run(e)
	return normalize(e.log, e.base)
}

func TestConformance(t *testing.T) {
	etcdBin, raftkvBin := os.Getenv("CONFORMANCE_ETCD_BIN"), os.Getenv("RAFTKV_BIN")
	if etcdBin == "" || raftkvBin == "" {
		t.Skip("needs CONFORMANCE_ETCD_BIN and RAFTKV_BIN: run tests/conformance/run")
	}
	etcdctlBin = os.Getenv("CONFORMANCE_ETCDCTL_BIN")
	if etcdctlBin == "" {
		t.Fatal("CONFORMANCE_ETCDCTL_BIN (etcdctl 3.6) is needed too")
	}
	known := readDivergences(t)
	etcd := connect(t, "etcd", startEtcd(t, etcdBin))
	raftkv := connect(t, "raftkv", startRaftkv(t, raftkvBin))

	only := os.Getenv("CONFORMANCE_ONLY")
	seen := map[string]bool{}
	var identical, explained, unexplained []string
	failed := false
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("two cases named %s", c.name)
		}
		seen[c.name] = true
		if only != "" && !strings.Contains(c.name, only) {
			continue
		}
		want, err := runCase(t, etcd, c)
		if err != nil {
			t.Fatalf("%s on etcd: %v", c.name, err)
		}
		got, err := runCase(t, raftkv, c)
		if err != nil {
			t.Fatalf("%s on raftkv: %v", c.name, err)
		}
		_, isKnown := known[c.name]
		switch {
		case want == got && isKnown:
			failed = true
			t.Errorf("%s: identical now; remove it from divergences.txt", c.name)
		case want == got:
			identical = append(identical, c.name)
		case isKnown:
			explained = append(explained, c.name)
		default:
			failed = true
			unexplained = append(unexplained, c.name)
			t.Errorf("%s: divergent, not explained in divergences.txt\n--- etcd\n%s\n--- raftkv\n%s", c.name, want, got)
		}
	}
	for name := range known {
		if !seen[name] {
			failed = true
			t.Errorf("divergences.txt names %s, which is no case", name)
		}
	}
	sort.Strings(explained)
	var table strings.Builder
	fmt.Fprintf(&table, "conformance: %d cases, %d identical, %d divergent with a reason, %d divergent without\n",
		len(identical)+len(explained)+len(unexplained), len(identical), len(explained), len(unexplained))
	for _, name := range explained {
		fmt.Fprintf(&table, "  divergent  %-44s %s\n", name, known[name])
	}
	for _, name := range unexplained {
		fmt.Fprintf(&table, "  DIVERGENT  %-44s (no reason written down)\n", name)
	}
	t.Log("\n" + table.String())
	if failed {
		t.Log("some cases diverge without a written reason (see above)")
	}
}
