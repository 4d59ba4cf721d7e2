// Package statefile keeps one node's saved state in a file: versioned,
// tagged with the node's id, readable only by its owner (0600 in a
// directory created 0700) and replaced atomically, so a crash at any
// instant leaves either the old file or the new one, never a torn one.
//
// The package knows nothing of what it stores: the caller hands it a
// value to encode as JSON (or, to stream a large one, an io.WriterTo that
// writes its JSON) and the version of that value's format.
package statefile

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// format tags the envelope so that any other JSON file put at the path is
// told apart from a damaged state file.
const format = "waylume-node-state"

// Why a file was not used. Read wraps them; classify with errors.Is. A
// missing file is fs.ErrNotExist.
var (
	ErrCorrupt = errors.New("state file is corrupt")
	ErrForeign = errors.New("state file belongs to another node")
	ErrVersion = errors.New("state file has an unknown format version")
)

// envelope is the file: what it is, whose, which format, then the state.
type envelope struct {
	Format  string          `json:"format"`
	Version int             `json:"version"`
	NodeID  string          `json:"node_id"`
	State   json.RawMessage `json:"state"`
}

// File is one state file. Its methods are safe for concurrent use.
type File struct {
	dir, path string

	mu   sync.Mutex
	last [sha256.Size]byte // of the content last read or written
	have bool
}

// New returns the file name in dir; nothing is touched yet.
func New(dir, name string) *File {
	return &File{dir: dir, path: filepath.Join(dir, name)}
}

// Path is where the file lives.
func (f *File) Path() string { return f.path }

// Write saves state as nodeID's, in format version. Content equal to what
// the file already holds (as last read or written) is not written again, so
// a node saving an unchanged state does not wear the disk.
func (f *File) Write(nodeID string, version int, state any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// CreateTemp makes the file 0600, in the same directory so the rename
	// stays on one filesystem.
	tmp, err := os.CreateTemp(f.dir, filepath.Base(f.path)+".tmp*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(tmp, h), 256<<10)
	if err := encode(w, nodeID, version, state); err != nil {
		return fmt.Errorf("state file: encode: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("state file: write: %w", err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if f.have && sum == f.last {
		return nil // unchanged: the deferred cleanup drops the copy
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("state file: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("state file: close: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("state file: rename: %w", err)
	}
	done = true
	// The rename is durable only once the directory is.
	if err := syncDir(f.dir); err != nil {
		return fmt.Errorf("state file: sync directory: %w", err)
	}
	f.last, f.have = sum, true
	return nil
}

// encode writes the envelope around state without building it in memory.
func encode(w io.Writer, nodeID string, version int, state any) error {
	head, err := json.Marshal(struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
		NodeID  string `json:"node_id"`
	}{format, version, nodeID})
	if err != nil {
		return err
	}
	if _, err := w.Write(head[:len(head)-1]); err != nil { // without the closing brace
		return err
	}
	if _, err := io.WriteString(w, `,"state":`); err != nil {
		return err
	}
	if wt, ok := state.(io.WriterTo); ok {
		if _, err := wt.WriteTo(w); err != nil {
			return err
		}
	} else if err := json.NewEncoder(w).Encode(state); err != nil {
		return err
	}
	_, err = io.WriteString(w, "}\n")
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Read decodes nodeID's saved state of format version into state and
// returns when it was saved. It fails with fs.ErrNotExist when there is no
// file, and with ErrCorrupt, ErrForeign or ErrVersion when the file cannot
// be trusted to be this node's state in this format.
func (f *File) Read(nodeID string, version int, state any) (saved time.Time, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := os.ReadFile(f.path)
	if err != nil {
		return time.Time{}, fmt.Errorf("state file: %w", err)
	}
	fi, err := os.Stat(f.path)
	if err != nil {
		return time.Time{}, fmt.Errorf("state file: %w", err)
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&env); err != nil || env.Format != format || len(env.State) == 0 {
		return time.Time{}, fmt.Errorf("%s: %w", f.path, ErrCorrupt)
	}
	if dec.More() {
		return time.Time{}, fmt.Errorf("%s: trailing data: %w", f.path, ErrCorrupt)
	}
	if env.NodeID != nodeID {
		return time.Time{}, fmt.Errorf("%s: node %s: %w", f.path, env.NodeID, ErrForeign)
	}
	if env.Version != version {
		return time.Time{}, fmt.Errorf("%s: version %d, want %d: %w", f.path, env.Version, version, ErrVersion)
	}
	sd := json.NewDecoder(bytes.NewReader(env.State))
	sd.DisallowUnknownFields()
	if err := sd.Decode(state); err != nil {
		return time.Time{}, fmt.Errorf("%s: state: %w", f.path, errors.Join(ErrCorrupt, err))
	}
	f.last, f.have = sha256.Sum256(b), true
	return fi.ModTime(), nil
}
