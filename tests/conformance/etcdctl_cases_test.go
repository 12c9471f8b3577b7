package conformance

// etcdctl 3.6 against both servers: the commands operators run first
// (endpoint health and status, snapshot save, alarm list, hashkv), their
// exit status and what they print, normalized.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// etcdctlBin is etcdctl 3.6 (CONFORMANCE_ETCDCTL_BIN), checked at start.
var etcdctlBin string

// etcdctl runs etcdctl against endpoints and returns its exit code, stdout
// and stderr.
func (e *env) etcdctl(endpoints []string, args ...string) (int, string, string) {
	ctx, cancel := context.WithTimeout(e.ctx, 15*time.Second)
	defer cancel()
	all := append([]string{"--endpoints", strings.Join(endpoints, ","), "--dial-timeout=5s", "--command-timeout=10s"}, args...)
	cmd := exec.CommandContext(ctx, etcdctlBin, all...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if x, ok := err.(*exec.ExitError); ok {
			code = x.ExitCode()
		}
	}
	return code, out.String(), errOut.String()
}

// leaderEndpoint is the endpoint of the member the suite's client uses.
func (e *env) leaderEndpoint() string {
	for i, m := range e.s.members {
		if m == e.s.leader {
			return e.s.endpoints[i]
		}
	}
	return e.s.endpoints[0]
}

var (
	durations = regexp.MustCompile(`[0-9.]+(µs|ms|s)\b`)
	addresses = regexp.MustCompile(`https?://127\.0\.0\.1:[0-9]+`)
	paths     = regexp.MustCompile(`/[^ ]*/snap\.db`)
)

// plain removes what differs by design from etcdctl's text: times,
// addresses, the folder of a file.
func plain(s string) string {
	s = durations.ReplaceAllString(s, "<duration>")
	s = addresses.ReplaceAllString(s, "<endpoint>")
	return paths.ReplaceAllString(s, "<dir>/snap.db")
}

func init() {
	add("etcdctl/endpoint-health", func(e *env) {
		code, out, errOut := e.etcdctl(e.s.endpoints, "endpoint", "health", "-w", "json")
		var rows []struct {
			Endpoint string `json:"endpoint"`
			Health   bool   `json:"health"`
			Error    string `json:"error"`
		}
		parseErr := json.Unmarshal([]byte(out), &rows)
		healthy := parseErr == nil && len(rows) == len(e.s.endpoints)
		var errs []string
		for _, r := range rows {
			healthy = healthy && r.Health
			if r.Error != "" {
				errs = append(errs, r.Error)
			}
		}
		e.note("exit", code)
		e.note("every endpoint healthy", healthy)
		e.note("errors", errs)
		if !healthy {
			e.note("stderr", plain(errOut))
		}
	})
	add("etcdctl/endpoint-status", func(e *env) {
		code, out, errOut := e.etcdctl([]string{e.leaderEndpoint()}, "endpoint", "status", "-w", "json")
		var rows []struct {
			Endpoint string         `json:"Endpoint"`
			Status   map[string]any `json:"Status"`
		}
		e.note("exit", code)
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
			e.note("output", plain(out)+plain(errOut))
			return
		}
		// Which fields are there and filled, not their values (the
		// storage version is maintenance/status-storage-version's).
		var filled []string
		delete(rows[0].Status, "storageVersion")
		for k, v := range rows[0].Status {
			if v != nil && v != "" && v != float64(0) && v != false {
				filled = append(filled, k)
			}
		}
		sort.Strings(filled)
		e.note("filled fields", filled)
		code, out, _ = e.etcdctl([]string{e.leaderEndpoint()}, "endpoint", "status", "-w", "table")
		e.note("table exit", code)
		e.note("table columns", strings.Fields(strings.SplitN(strings.TrimSpace(out), "\n", 3)[1]))
	})
	add("etcdctl/snapshot-save", func(e *env) {
		e.put("a", "1")
		file := filepath.Join(e.t.TempDir(), "snap.db")
		code, out, errOut := e.etcdctl([]string{e.leaderEndpoint()}, "snapshot", "save", file)
		e.note("exit", code)
		e.note("stdout", plain(out))
		if code != 0 {
			e.note("stderr", plain(errOut))
		}
		st, err := os.Stat(file)
		e.note("file written", err == nil && st.Size() > 0)
	})
	add("etcdctl/alarm-list", func(e *env) {
		code, out, errOut := e.etcdctl(e.s.endpoints, "alarm", "list")
		e.note("exit", code)
		e.note("stdout", out)
		e.note("stderr", plain(errOut))
	})
	add("etcdctl/put-get-sorted", func(e *env) {
		five(e)
		code, out, errOut := e.etcdctl([]string{e.leaderEndpoint()}, "get", "--prefix", "--sort-by=MODIFY", e.prefix)
		e.note("exit", code)
		e.note("stdout", strings.ReplaceAll(out, e.prefix, "<prefix>/"))
		e.note("stderr", plain(errOut))
	})
	add("etcdctl/endpoint-hashkv", func(e *env) {
		e.put("a", "1")
		code, out, errOut := e.etcdctl(e.s.endpoints, "endpoint", "hashkv", "-w", "json")
		var rows []struct {
			HashKV struct {
				Hash uint32 `json:"hash"`
			} `json:"HashKV"`
		}
		e.note("exit", code)
		if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != len(e.s.endpoints) {
			e.note("output", plain(out)+plain(errOut))
			return
		}
		same := true
		for _, r := range rows {
			same = same && r.HashKV.Hash == rows[0].HashKV.Hash && r.HashKV.Hash != 0
		}
		e.note("same hash on every endpoint", same)
	})
}
