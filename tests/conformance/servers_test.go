package conformance

// Starting the two servers the suite compares: a one-member etcd and a
// three-member raftkv cluster, each on free loopback ports with its data in
// a temporary folder, each stopped by its process handle when the test ends.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// freePort asks the kernel for a loopback port and releases it; the
// suite's servers bind it right after. Never the same one twice.
var handedOut = map[int]bool{}

func freePort(t *testing.T) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut[port] {
			handedOut[port] = true
			return port
		}
	}
}

// start runs one server process with its output in a log file and kills it
// (by its own handle) at the end of the test.
func start(t *testing.T, log string, name string, args []string, env []string) {
	t.Helper()
	out, err := os.Create(log)
	if err != nil {
		t.Fatalf("log file: %v", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		out.Close()
		if t.Failed() {
			if b, err := os.ReadFile(log); err == nil {
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) > 20 {
					lines = lines[len(lines)-20:]
				}
				t.Logf("last lines of %s:\n%s", filepath.Base(log), strings.Join(lines, "\n"))
			}
		}
	})
}

// startEtcd starts a one-member etcd and returns its client endpoint.
func startEtcd(t *testing.T, bin string) []string {
	dir := t.TempDir()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	start(t, filepath.Join(dir, "etcd.log"), bin, []string{
		"--name", "conformance",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "conformance=" + peer,
		"--log-level", "warn",
	}, nil)
	return []string{client}
}

// startRaftkv starts a three-member raftkv cluster and returns its client
// endpoints.
func startRaftkv(t *testing.T, bin string) []string {
	dir := t.TempDir()
	type node struct{ id, peer, client, http int }
	var nodes []node
	var initial []string
	for id := 1; id <= 3; id++ {
		n := node{id, freePort(t), freePort(t), freePort(t)}
		nodes = append(nodes, n)
		initial = append(initial, fmt.Sprintf("%d=http://127.0.0.1:%d", id, n.peer))
	}
	var endpoints []string
	for _, n := range nodes {
		start(t, filepath.Join(dir, fmt.Sprintf("node-%d.log", n.id)), bin, []string{
			"serve", "--id", fmt.Sprint(n.id),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("node-%d", n.id)),
			"--listen-http", fmt.Sprintf("127.0.0.1:%d", n.http),
			"--listen-peer", fmt.Sprintf("127.0.0.1:%d", n.peer),
			"--advertise-peer", fmt.Sprintf("http://127.0.0.1:%d", n.peer),
			"--listen-client", fmt.Sprintf("127.0.0.1:%d", n.client),
			"--initial-cluster", strings.Join(initial, ","),
			"--election-timeout-ms", "500", "--heartbeat-interval-ms", "50",
		}, []string{
			"RAFTKV_PEER_SECRET=conformance-suite-peer-secret",
			"RAFTKV_LOG=warn",
		})
		endpoints = append(endpoints, fmt.Sprintf("http://127.0.0.1:%d", n.client))
	}
	return endpoints
}

// server is one side of the comparison: a connection to its leader (so
// that a serializable read sees the write before it), and one to every
// member for the checks that ask each one. Plain gRPC connections, without
// clientv3's retrying interceptors: the suite sees each answer as sent.
type server struct {
	name      string
	endpoints []string
	leader    *grpc.ClientConn
	members   []*grpc.ClientConn
}

func connect(t *testing.T, name string, endpoints []string) *server {
	t.Helper()
	s := &server{name: name, endpoints: endpoints}
	for _, ep := range endpoints {
		c, err := grpc.NewClient(strings.TrimPrefix(ep, "http://"),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatalf("%s: connect %s: %v", name, ep, err)
		}
		t.Cleanup(func() { c.Close() })
		s.members = append(s.members, c)
	}
	// Wait for a leader, then find which member it is.
	deadline := time.Now().Add(30 * time.Second)
	for s.leader == nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no leader within 30 s", name)
		}
		for _, c := range s.members {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := pb.NewMaintenanceClient(c).Status(ctx, &pb.StatusRequest{})
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				s.leader = c
			}
		}
		if s.leader == nil {
			time.Sleep(100 * time.Millisecond)
		}
	}
	// A write goes through: the store is ready for the suite.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := pb.NewKVClient(s.leader).Put(ctx, &pb.PutRequest{Key: []byte("/ready"), Value: []byte("1")})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no write within 30 s: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}
