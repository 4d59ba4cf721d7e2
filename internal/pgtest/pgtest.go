// Package pgtest runs a throwaway PostgreSQL cluster for a package's tests:
// initdb into a temporary directory, a unix socket in that directory, no TCP,
// wal_level=logical (for wal2json) and fsync off. Each test gets a database of
// its own; the cluster is stopped when the tests end, failed or not.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		db := pgtest.New(t)
//		conn, err := pgx.Connect(ctx, db.URL)
//		...
//	}
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is one running PostgreSQL server.
type Cluster struct {
	Dir    string // data directory and socket directory parent
	Socket string // directory holding the unix socket
	Port   int    // names the socket file (.s.PGSQL.<port>)
	bin    string
	cred   *syscall.Credential
	uid    int

	mu      sync.Mutex
	running bool
}

var (
	current *Cluster
	dbSeq   atomic.Int64
)

// Main starts a cluster, runs the package's tests and stops the cluster.
// It returns the exit code for os.Exit.
func Main(m *testing.M) int {
	c, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	current = c
	code := m.Run()
	if err := c.Destroy(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
	}
	return code
}

// Current returns the cluster Main started.
func Current(t testing.TB) *Cluster {
	t.Helper()
	if current == nil {
		t.Fatal("pgtest: no cluster: call pgtest.Main from TestMain")
	}
	return current
}

// BinDir finds the PostgreSQL server binaries: initdb on PATH, else the
// newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin: apt-get install postgresql postgresql-15-wal2json")
}

// Start creates and starts a new cluster in a temporary directory.
func Start() (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "waylume-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Socket: dir, Port: 5432, bin: bin, uid: os.Geteuid()}
	// PostgreSQL refuses to run as root: run it as the postgres (or nobody)
	// user, owning only the temporary directory.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			u, err = user.Lookup("nobody")
		}
		if err != nil {
			return nil, fmt.Errorf("running as root and no postgres or nobody user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		c.uid = uid
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.command("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	conf := `
listen_addresses = ''
unix_socket_directories = '` + dir + `'
port = 5432
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 400
fsync = off
# On, as on Supabase. Off, a commit's WAL waits for the WAL writer, which
# may have gone to sleep for 5 s, and logical decoding (the Realtime test
# server's broadcasts) sees the commit only then. With fsync off the flush
# at commit is a write to the page cache.
synchronous_commit = on
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
`
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf)
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := c.StartServer(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// StartServer starts a stopped cluster; tests use it with StopServer to
// simulate a database outage.
func (c *Cluster) StartServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	data := filepath.Join(c.Dir, "data")
	out, err := c.command("pg_ctl", "-D", data, "-l", filepath.Join(c.Dir, "server.log"), "-w", "-t", "60", "start").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
		return fmt.Errorf("pg_ctl start: %w: %s\n%s", err, out, log)
	}
	c.running = true
	return nil
}

// StopServer stops the server (fast shutdown: clients are disconnected).
func (c *Cluster) StopServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	out, err := c.command("pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-m", "fast", "-w", "-t", "60", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	c.running = false
	return nil
}

// Destroy stops the server and removes its directory.
func (c *Cluster) Destroy() error {
	err := c.StopServer()
	return errors.Join(err, os.RemoveAll(c.Dir))
}

// URL returns a connection URL for database db as user.
func (c *Cluster) URL(db, user string) string {
	q := url.Values{}
	q.Set("host", c.Socket)
	q.Set("port", strconv.Itoa(c.Port))
	q.Set("sslmode", "disable")
	return (&url.URL{Scheme: "postgres", User: url.User(user), Path: "/" + db, RawQuery: q.Encode()}).String()
}

// DB is one test's database.
type DB struct {
	Cluster *Cluster
	Name    string
	URL     string // superuser connection URL
}

// URLAs returns the database's URL for another role (trust auth: no password).
func (d *DB) URLAs(role string) string { return d.Cluster.URL(d.Name, role) }

// New creates an empty database for t, dropped when t ends.
func New(t testing.TB) *DB {
	t.Helper()
	c := Current(t)
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, c.URL("postgres", "postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.StartServer(); err != nil {
			t.Logf("pgtest: restart for cleanup: %v", err)
			return
		}
		admin, err := pgx.Connect(ctx, c.URL("postgres", "postgres"))
		if err != nil {
			t.Logf("pgtest: connect for cleanup: %v", err)
			return
		}
		defer admin.Close(ctx)
		// Slots keep a database busy; drop them with it.
		admin.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active", name)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: drop database: %v", err)
		}
	})
	return &DB{Cluster: c, Name: name, URL: c.URL(name, "postgres")}
}
