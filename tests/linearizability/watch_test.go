package main

// etcd's own Go client (clientv3) watching a raftkv cluster while keys are
// written and leadership moves: every acknowledged write must arrive as an
// event, in revision order, none twice. It needs a running cluster, so it
// is run by the end-to-end tests in tests/tests/watch.rs, which start one
// and pass its client endpoints in RAFTKV_WATCH_ENDPOINTS; on its own it is
// skipped. With RAFTKV_WATCH_PACE_MS the writes are spaced out (and no
// leadership is moved) while the caller kills and restarts members: the
// watch then has to survive its member's crash.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const watchWrites = 200

func TestAWatchSeesEveryWriteInOrderThroughALeaderChange(t *testing.T) {
	endpoints := os.Getenv("RAFTKV_WATCH_ENDPOINTS")
	if endpoints == "" {
		t.Skip("needs a raftkv cluster: run by the end-to-end test tests/tests/watch.rs")
	}
	eps := strings.Split(endpoints, ",")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	connect := func(eps ...string) *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("connect %v: %v", eps, err)
		}
		return c
	}
	watcher := connect(eps...)
	defer watcher.Close()
	writer := connect(eps...)
	defer writer.Close()

	first, err := writer.Put(ctx, "/go/start", "0")
	if err != nil {
		t.Fatalf("first put: %v", err)
	}
	from := first.Header.Revision + 1
	events := watcher.Watch(ctx, "/go/k", clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())

	// Writes, with a leadership transfer half way, or paced while the
	// caller crashes members.
	pace := time.Duration(0)
	if ms, err := strconv.Atoi(os.Getenv("RAFTKV_WATCH_PACE_MS")); err == nil {
		pace = time.Duration(ms) * time.Millisecond
	}
	acked := make(map[int64]string)
	var last int64
	for i := 0; i < watchWrites; i++ {
		if i == watchWrites/2 && pace == 0 {
			moveLeader(ctx, t, writer, eps, connect)
		}
		time.Sleep(pace)
		key := fmt.Sprintf("/go/k%03d", i%17)
		value := fmt.Sprint(i)
		var resp *clientv3.PutResponse
		for attempt := 0; ; attempt++ {
			resp, err = writer.Put(ctx, key, value)
			if err == nil {
				break
			}
			if attempt > 100 {
				t.Fatalf("put %s: %v", key, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		acked[resp.Header.Revision] = value
		last = resp.Header.Revision
	}

	// Every acknowledged write arrives; revisions only go up.
	seen := int64(from - 1)
	for seen < last {
		select {
		case resp, ok := <-events:
			if !ok {
				t.Fatalf("the watch ended after revision %d of %d", seen, last)
			}
			if err := resp.Err(); err != nil {
				t.Fatalf("watch error: %v", err)
			}
			for _, ev := range resp.Events {
				rev := ev.Kv.ModRevision
				if rev <= seen {
					t.Fatalf("revision %d after %d: reordered or repeated", rev, seen)
				}
				if ev.Type != mvccpb.PUT {
					t.Fatalf("unexpected %v at %d", ev.Type, rev)
				}
				if want, ok := acked[rev]; ok && want != string(ev.Kv.Value) {
					t.Fatalf("revision %d: value %q, the write said %q", rev, ev.Kv.Value, want)
				}
				if ev.Kv.Version > 1 && ev.PrevKv == nil {
					t.Fatalf("revision %d: no prev_kv for an overwrite", rev)
				}
				delete(acked, rev)
				seen = rev
			}
		case <-ctx.Done():
			t.Fatalf("timed out at revision %d of %d", seen, last)
		}
	}
	if len(acked) != 0 {
		t.Fatalf("%d acknowledged writes never arrived: %v", len(acked), acked)
	}
}

// moveLeader hands leadership from the current leader to another member.
func moveLeader(ctx context.Context, t *testing.T, c *clientv3.Client, eps []string, connect func(...string) *clientv3.Client) {
	for _, ep := range eps {
		st, err := c.Status(ctx, ep)
		if err != nil || st.Header.MemberId != st.Leader {
			continue
		}
		members, err := c.MemberList(ctx)
		if err != nil {
			t.Fatalf("member list: %v", err)
		}
		for _, m := range members.Members {
			if m.ID == st.Leader {
				continue
			}
			leader := connect(ep)
			defer leader.Close()
			if _, err := leader.MoveLeader(ctx, m.ID); err != nil {
				t.Fatalf("move leader to %x: %v", m.ID, err)
			}
			return
		}
	}
	t.Fatalf("no leader found among %v", eps)
}
