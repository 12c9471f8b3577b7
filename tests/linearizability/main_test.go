package main

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func ret(t int64) *int64 { return &t }

func TestAReadOfTheLatestWriteIsLinearizable(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "1", Call: 0, Return: ret(10)},
		{Client: 1, Op: "get", Key: "a", Value: "1", Found: true, Call: 20, Return: ret(30)},
		{Client: 0, Op: "delete", Key: "a", Call: 40, Return: ret(50)},
		{Client: 1, Op: "get", Key: "a", Call: 60, Return: ret(70)},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Ok {
		t.Fatalf("got %v, %v; want ok", r, err)
	}
}

func TestAStaleReadIsNotLinearizable(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "1", Call: 0, Return: ret(10)},
		{Client: 0, Op: "put", Key: "a", Value: "2", Call: 20, Return: ret(30)},
		// Starts after the second write returned, yet sees the first.
		{Client: 1, Op: "get", Key: "a", Value: "1", Found: true, Call: 40, Return: ret(50)},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Illegal {
		t.Fatalf("got %v, %v; want illegal", r, err)
	}
}

func TestAWriteWithUnknownOutcomeMayTakeEffectLater(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "1", Call: 0, Return: nil},
		{Client: 1, Op: "get", Key: "a", Call: 10, Return: ret(20)},
		{Client: 1, Op: "get", Key: "a", Value: "1", Found: true, Call: 100, Return: ret(110)},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Ok {
		t.Fatalf("got %v, %v; want ok", r, err)
	}
}

func TestALostAcknowledgedWriteIsNotLinearizable(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "1", Call: 0, Return: ret(10)},
		{Client: 1, Op: "get", Key: "a", Call: 20, Return: ret(30)},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Illegal {
		t.Fatalf("got %v, %v; want illegal", r, err)
	}
}

func TestMalformedHistoriesAreRejected(t *testing.T) {
	bad := [][]record{
		{{Op: "increment", Key: "a", Call: 0, Return: ret(1)}},
		{{Op: "get", Key: "a", Call: 5, Return: ret(1)}},
		{{Op: "get", Key: "a", Call: 5, Return: nil}},
	}
	for i, h := range bad {
		if _, err := check(h, time.Minute, ""); err == nil {
			t.Errorf("history %d: want an error", i)
		}
	}
}

func TestAnUnknownPutNobodySawIsDroppedAndOneSomebodySawEndsByThatRead(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "lost", Call: 0, Return: nil},
		{Client: 1, Op: "put", Key: "a", Value: "seen", Call: 5, Return: nil},
		{Client: 2, Op: "get", Key: "a", Value: "seen", Found: true, Call: 10, Return: ret(20)},
		{Client: 2, Op: "get", Key: "a", Value: "seen", Found: true, Call: 30, Return: ret(40)},
	}
	got := settleUnknownPuts(h)
	if len(got) != 3 || got[0].Value != "seen" || got[0].Return == nil || *got[0].Return != 20 {
		t.Fatalf("got %+v", got)
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Ok {
		t.Fatalf("got %v, %v; want ok", r, err)
	}
}

func TestAValueReadBeforeItsUnknownPutWasCalledIsNotLinearizable(t *testing.T) {
	h := []record{
		{Client: 2, Op: "get", Key: "a", Value: "early", Found: true, Call: 0, Return: ret(10)},
		{Client: 1, Op: "put", Key: "a", Value: "early", Call: 20, Return: nil},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Illegal {
		t.Fatalf("got %v, %v; want illegal", r, err)
	}
}

func TestSettlingKeepsAStaleReadAfterAnUnknownPutIllegal(t *testing.T) {
	h := []record{
		{Client: 0, Op: "put", Key: "a", Value: "1", Call: 0, Return: ret(10)},
		{Client: 1, Op: "put", Key: "a", Value: "2", Call: 20, Return: nil},
		{Client: 2, Op: "get", Key: "a", Value: "2", Found: true, Call: 30, Return: ret(40)},
		// After "2" was seen, "1" again: no write of "1" can follow.
		{Client: 2, Op: "get", Key: "a", Value: "1", Found: true, Call: 50, Return: ret(60)},
	}
	if r, err := check(h, time.Minute, ""); err != nil || r != porcupine.Illegal {
		t.Fatalf("got %v, %v; want illegal", r, err)
	}
}
