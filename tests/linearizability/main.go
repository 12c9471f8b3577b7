// Command linearizability checks a history of key-value operations recorded
// by raftkv's end-to-end tests against a sequential key-value model, using
// porcupine (the checker etcd's robustness tests use).
//
// Usage: linearizability [-timeout 60s] [-viz out.html] history.json
//
// The history is a JSON array of operations:
//
//	{"client": 0, "op": "put"|"get"|"delete", "key": "k", "value": "v",
//	 "found": true, "call": 1700000000000, "return": 1700000000500}
//
// "value" is the written value for a put and the value read for a get;
// "found" says whether a get found the key. A write whose outcome the
// client could not learn (a timeout, a lost connection) has "return": null:
// it may take effect at any time after its call, or never. Failed reads are
// left out of the history by the recorder: they have no effect.
//
// Exit status: 0 linearizable, 1 not linearizable, 2 bad input or the check
// did not finish within the timeout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/anishathalye/porcupine"
)

// record is one operation as the recorder writes it.
type record struct {
	Client int    `json:"client"`
	Op     string `json:"op"`
	Key    string `json:"key"`
	Value  string `json:"value"`
	Found  bool   `json:"found"`
	Call   int64  `json:"call"`
	Return *int64 `json:"return"`
}

// input is what a client asked for.
type input struct {
	op    string
	key   string
	value string
}

// output is what a read saw.
type output struct {
	found bool
	value string
}

// state is one key's value in the sequential model.
type state struct {
	present bool
	value   string
}

// kvModel is a map of independent registers, one per key. Keys never
// interact, so porcupine checks each key's history on its own
// (P-compositionality), which keeps long histories tractable.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			k := op.Input.(input).key
			if _, seen := byKey[k]; !seen {
				order = append(order, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		parts := make([][]porcupine.Operation, 0, len(order))
		for _, k := range order {
			parts = append(parts, byKey[k])
		}
		return parts
	},
	Init: func() interface{} { return state{} },
	Step: func(s, in, out interface{}) (bool, interface{}) {
		st := s.(state)
		i := in.(input)
		switch i.op {
		case "put":
			return true, state{present: true, value: i.value}
		case "delete":
			return true, state{}
		case "get":
			o := out.(output)
			return o.found == st.present && (!o.found || o.value == st.value), st
		}
		return false, st
	},
	Equal: func(a, b interface{}) bool { return a.(state) == b.(state) },
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		switch i.op {
		case "put":
			return fmt.Sprintf("put(%q, %q)", i.key, i.value)
		case "delete":
			return fmt.Sprintf("delete(%q)", i.key)
		}
		o := out.(output)
		if !o.found {
			return fmt.Sprintf("get(%q) -> absent", i.key)
		}
		return fmt.Sprintf("get(%q) -> %q", i.key, o.value)
	},
	DescribeState: func(s interface{}) string {
		st := s.(state)
		if !st.present {
			return "absent"
		}
		return fmt.Sprintf("%q", st.value)
	},
}

// operations turns records into porcupine operations.
func operations(records []record) ([]porcupine.Operation, error) {
	ops := make([]porcupine.Operation, 0, len(records))
	for n, r := range records {
		switch r.Op {
		case "put", "delete", "get":
		default:
			return nil, fmt.Errorf("operation %d: unknown op %q", n, r.Op)
		}
		ret := int64(math.MaxInt64)
		if r.Return != nil {
			ret = *r.Return
			if ret < r.Call {
				return nil, fmt.Errorf("operation %d: returns before it is called", n)
			}
		} else if r.Op == "get" {
			return nil, fmt.Errorf("operation %d: a read must have completed", n)
		}
		ops = append(ops, porcupine.Operation{
			ClientId: r.Client,
			Input:    input{op: r.Op, key: r.Key, value: r.Value},
			Output:   output{found: r.Found, value: r.Value},
			Call:     r.Call,
			Return:   ret,
		})
	}
	return ops, nil
}

// settleUnknownPuts narrows the puts whose outcome the client never
// learned, which porcupine must otherwise keep open until the end of the
// history (a few dozen on one key make its search explode). Every put
// writes a value of its own, so, without changing the verdict:
//   - a put whose value no read ever saw is dropped: had it taken effect,
//     no read fell between it and the next write, so the history with it
//     is linearizable exactly when the history without it is;
//   - a put whose value a read saw must have taken effect before that read
//     returned: its return becomes the earliest such read's return.
//
// A read that saw the value before the put was even called is left for
// porcupine to reject.
func settleUnknownPuts(records []record) []record {
	type kv struct{ key, value string }
	seen := map[kv]int64{}
	for _, r := range records {
		if r.Op != "get" || !r.Found || r.Return == nil {
			continue
		}
		k := kv{r.Key, r.Value}
		if t, ok := seen[k]; !ok || *r.Return < t {
			seen[k] = *r.Return
		}
	}
	out := make([]record, 0, len(records))
	for _, r := range records {
		if r.Op == "put" && r.Return == nil {
			t, ok := seen[kv{r.Key, r.Value}]
			if !ok {
				continue
			}
			if t >= r.Call {
				r.Return = &t
			}
		}
		out = append(out, r)
	}
	return out
}

// check decides whether the history is linearizable.
func check(records []record, timeout time.Duration, viz string) (porcupine.CheckResult, error) {
	ops, err := operations(settleUnknownPuts(records))
	if err != nil {
		return porcupine.Unknown, err
	}
	result, info := porcupine.CheckOperationsVerbose(kvModel, ops, timeout)
	if viz != "" {
		if err := porcupine.VisualizePath(kvModel, info, viz); err != nil {
			return result, fmt.Errorf("writing the visualization: %w", err)
		}
	}
	return result, nil
}

func main() {
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long (result: unknown)")
	viz := flag.String("viz", "", "write an HTML visualization of the history to this file")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: linearizability [-timeout D] [-viz out.html] history.json")
		os.Exit(2)
	}
	data, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "linearizability: %v\n", err)
		os.Exit(2)
	}
	var records []record
	if err := json.Unmarshal(data, &records); err != nil {
		fmt.Fprintf(os.Stderr, "linearizability: %s is not a history: %v\n", flag.Arg(0), err)
		os.Exit(2)
	}
	result, err := check(records, *timeout, *viz)
	if err != nil {
		fmt.Fprintf(os.Stderr, "linearizability: %v\n", err)
		os.Exit(2)
	}
	fmt.Printf("linearizability: %d operations: %s\n", len(records), result)
	switch result {
	case porcupine.Ok:
		os.Exit(0)
	case porcupine.Illegal:
		os.Exit(1)
	default:
		os.Exit(2)
	}
}
