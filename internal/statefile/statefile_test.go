package statefile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const node = "00000000-0000-0000-0000-00000000000a"

type payload struct {
	Peers []string         `json:"peers"`
	Quota map[string]int64 `json:"quota"`
	At    time.Time        `json:"at"`
}

func TestRoundTripAndPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created by Write
	f := New(dir, "state.json")
	in := payload{Peers: []string{"a", "b"}, Quota: map[string]int64{"a": 7}, At: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	if err := f.Write(node, 3, in); err != nil {
		t.Fatal(err)
	}
	var out payload
	saved, err := New(dir, "state.json").Read(node, 3, &out)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(saved) > time.Minute {
		t.Errorf("saved at %v", saved)
	}
	if len(out.Peers) != 2 || out.Peers[1] != "b" || out.Quota["a"] != 7 || !out.At.Equal(in.At) {
		t.Fatalf("round trip: %+v", out)
	}
	fi, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", di.Mode().Perm())
	}
}

// A write replaces the file by rename: a reader never sees a partial file,
// no temporary file is left behind, and an unchanged state is not written
// again.
func TestWriteIsAtomicAndSkipsUnchanged(t *testing.T) {
	dir := t.TempDir()
	f := New(dir, "state.json")
	if err := f.Write(node, 1, payload{Peers: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Write(node, 1, payload{Peers: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	same, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, same) {
		t.Error("an unchanged state was written again")
	}
	if err := f.Write(node, 1, payload{Peers: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Error("a changed state was written in place, not renamed over the old file")
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the state file", len(entries))
	}
	// A file of a failed write (the encoder refuses the value) leaves the
	// old state as it was.
	if err := f.Write(node, 1, map[string]any{"bad": func() {}}); err == nil {
		t.Fatal("encoding a func succeeded")
	}
	var out payload
	if _, err := f.Read(node, 1, &out); err != nil || len(out.Peers) != 2 {
		t.Fatalf("after a failed write: %+v %v", out, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("a failed write left %d entries", len(entries))
	}
}

func TestUntrustedFilesRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	var out payload
	if _, err := New(dir, "state.json").Read(node, 1, &out); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if err := New(dir, "state.json").Write(node, 1, payload{Peers: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	other := "00000000-0000-0000-0000-00000000000b"
	if _, err := New(dir, "state.json").Read(other, 1, &out); !errors.Is(err, ErrForeign) {
		t.Errorf("another node's file: %v", err)
	}
	if _, err := New(dir, "state.json").Read(node, 2, &out); !errors.Is(err, ErrVersion) {
		t.Errorf("another version: %v", err)
	}
	for name, content := range map[string]string{
		"truncated":     string(good[:len(good)/2]),
		"empty":         "",
		"not json":      "peers: a\n",
		"other json":    `{"peers":["a"]}`,
		"no state":      `{"format":"waylume-node-state","version":1,"node_id":"` + node + `"}`,
		"bad state":     `{"format":"waylume-node-state","version":1,"node_id":"` + node + `","state":{"peers":7}}`,
		"unknown field": `{"format":"waylume-node-state","version":1,"node_id":"` + node + `","state":{"peerz":[]}}`,
		"trailing":      string(good) + "{}",
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := New(dir, "state.json").Read(node, 1, &out); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}
