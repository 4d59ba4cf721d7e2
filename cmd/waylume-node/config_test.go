package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/waylume/waylume-node/netctl"
)

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// runCLI runs the binary's entry point in-process.
func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e, envMap(env))
	return code, o.String(), e.String()
}

const goodNode = "0b5e6f1c-7d8a-4b3c-9e2f-1a2b3c4d5e6f"

func TestBadSettingsExitWithOneLine(t *testing.T) {
	base := map[string]string{
		"WAYLUME_DATABASE_URL": "postgres://node@db.example:5432/postgres?sslmode=require",
		"WAYLUME_NODE_ID":      goodNode,
	}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<unset>" {
				delete(m, kv[i])
				continue
			}
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"missing database url", with("WAYLUME_DATABASE_URL", "<unset>"), nil,
			"missing --database-url (WAYLUME_DATABASE_URL): required"},
		{"missing node id", with("WAYLUME_NODE_ID", "<unset>"), nil,
			"missing --node-id (WAYLUME_NODE_ID): required"},
		{"node id not a uuid", with(), []string{"--node-id", "node-1"},
			"invalid --node-id (WAYLUME_NODE_ID): not a UUID (waylume.nodes.id)"},
		{"database url scheme", with("WAYLUME_DATABASE_URL", "mysql://db.example/x"), nil,
			"invalid --database-url (WAYLUME_DATABASE_URL): bad URL: want postgres://user:pass@host:5432/db or key=value pairs"},
		{"database url unparsable, password not echoed", with("WAYLUME_DATABASE_URL", "postgres://u:s3cr%zzet@db/x"), nil,
			"invalid --database-url (WAYLUME_DATABASE_URL): bad URL: cannot parse it (percent-encode special characters in the password)"},
		{"database url without host", with("WAYLUME_DATABASE_URL", "postgres:///x"), nil,
			"invalid --database-url (WAYLUME_DATABASE_URL): bad URL: no host (want postgres://user:pass@host:5432/db)"},
		{"realtime url scheme", with("WAYLUME_REALTIME_URL", "ftp://x.supabase.co/realtime/v1/websocket", "WAYLUME_SUPABASE_KEY", "k"), nil,
			`invalid --realtime-url (WAYLUME_REALTIME_URL): bad URL scheme "ftp": want wss:// (or ws://)`},
		{"realtime url without host", with("WAYLUME_SUPABASE_KEY", "k"), []string{"--realtime-url", "wss:///realtime"},
			"invalid --realtime-url (WAYLUME_REALTIME_URL): bad URL: no host"},
		{"realtime without key", with("WAYLUME_REALTIME_URL", "wss://x.supabase.co/realtime/v1/websocket"), nil,
			"missing --supabase-key (WAYLUME_SUPABASE_KEY): required when --realtime-url is set"},
		{"bad duration from env", with("WAYLUME_RESYNC_INTERVAL", "often"), nil,
			`invalid --resync-interval (WAYLUME_RESYNC_INTERVAL): bad duration "often": want e.g. 30s, 5m`},
		{"duration below minimum", with(), []string{"--usage-interval", "10ms"},
			"invalid --usage-interval (WAYLUME_USAGE_INTERVAL): duration 10ms is below the minimum 1s"},
		{"unknown mode", with("WAYLUME_WG_MODE", "fast"), nil,
			`invalid --wg-mode (WAYLUME_WG_MODE): unknown mode "fast": want auto, kernel or userspace`},
		{"metrics addr without port", with("WAYLUME_METRICS_ADDR", "9586"), nil,
			`invalid --metrics-addr (WAYLUME_METRICS_ADDR): bad address "9586": want host:port, e.g. 127.0.0.1:9586`},
		{"metrics port out of range", with("WAYLUME_METRICS_ADDR", "127.0.0.1:99999"), nil,
			`invalid --metrics-addr (WAYLUME_METRICS_ADDR): bad port "99999" in "127.0.0.1:99999"`},
		{"metrics host not an IP", with("WAYLUME_METRICS_ADDR", "metrics.example:9586"), nil,
			`invalid --metrics-addr (WAYLUME_METRICS_ADDR): bad host "metrics.example" in "metrics.example:9586": want an IP address`},
		{"log level", with("WAYLUME_LOG_LEVEL", "loud"), nil,
			`invalid --log-level (WAYLUME_LOG_LEVEL): unknown level "loud": want debug, info, warn or error`},
		{"log format", with(), []string{"--log-format", "xml"},
			`invalid --log-format (WAYLUME_LOG_FORMAT): unknown format "xml": want json or text`},
		{"interface name too long", with("WAYLUME_INTERFACE", "waylume-interface0"), nil,
			`invalid --interface (WAYLUME_INTERFACE): bad interface name "waylume-interface0": 1-15 letters, digits, '-', '_' or '.'`},
		{"egress interface name", with("WAYLUME_EGRESS_INTERFACE", "eth 0"), nil,
			`invalid --egress-interface (WAYLUME_EGRESS_INTERFACE): bad interface name "eth 0": 1-15 letters, digits, '-', '_' or '.'`},
		{"isolation not a bool", with("WAYLUME_CLIENT_ISOLATION", "maybe"), nil,
			`invalid --client-isolation (WAYLUME_CLIENT_ISOLATION): bad boolean "maybe": want true or false`},
		{"teardown not a bool", with("WAYLUME_TEARDOWN_ON_EXIT", "sometimes"), nil,
			`invalid --teardown-on-exit (WAYLUME_TEARDOWN_ON_EXIT): bad boolean "sometimes": want true or false`},
		{"allowed private prefix unparsable", with("WAYLUME_ALLOW_PRIVATE", "10.20.0.0/16,lan"), nil,
			`invalid --allow-private (WAYLUME_ALLOW_PRIVATE): bad prefix "lan": want e.g. 10.20.0.0/16 or fd00:1::/48`},
		{"allowed private prefix with host bits", with(), []string{"--allow-private", "10.20.0.1/16"},
			`invalid --allow-private (WAYLUME_ALLOW_PRIVATE): prefix "10.20.0.1/16" has host bits set: did you mean 10.20.0.0/16?`},
		{"allowed local without a port", with("WAYLUME_ALLOW_LOCAL", "udp/53,dns"), nil,
			`invalid --allow-local (WAYLUME_ALLOW_LOCAL): service "dns": want tcp/PORT, udp/PORT or PROTO/FROM-TO`},
		{"allowed local protocol", with("WAYLUME_ALLOW_LOCAL", "sctp/53"), nil,
			`invalid --allow-local (WAYLUME_ALLOW_LOCAL): service "sctp/53": protocol "sctp": want tcp/PORT, udp/PORT or PROTO/FROM-TO`},
		{"allowed local range backwards", with("WAYLUME_ALLOW_LOCAL", "tcp/9000-8000"), nil,
			`invalid --allow-local (WAYLUME_ALLOW_LOCAL): service "tcp/9000-8000": ports must be 1-65535, low to high: want tcp/PORT, udp/PORT or PROTO/FROM-TO`},
		{"routed subnets default route", with("WAYLUME_ROUTED_SUBNETS", "192.0.2.0/24,::/0"), nil,
			`invalid --routed-subnets (WAYLUME_ROUTED_SUBNETS): prefix ::/0 would forward any source un-NATed: name the routed networks`},
		{"empty private key file", with("WAYLUME_PRIVATE_KEY_FILE", ""), nil,
			"missing --private-key-file (WAYLUME_PRIVATE_KEY_FILE): required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.env, append([]string{"run"}, tc.args...)...)
			if code != exitConfig {
				t.Errorf("exit code %d, want %d", code, exitConfig)
			}
			if diff := cmp.Diff("waylume-node: "+tc.want+"\n", stderr); diff != "" {
				t.Errorf("stderr (-want +got):\n%s", diff)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if strings.Contains(stderr, "s3cr") {
				t.Errorf("the error echoes the password: %q", stderr)
			}
		})
	}
}

func TestUnknownCommandAndFlag(t *testing.T) {
	if code, _, stderr := runCLI(t, nil, "serve"); code != exitConfig || !strings.Contains(stderr, `unknown command "serve"`) {
		t.Errorf("unknown command: code %d stderr %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, nil, "run", "--bogus"); code != exitConfig || !strings.Contains(stderr, "flag provided but not defined: -bogus") {
		t.Errorf("unknown flag: code %d stderr %q", code, stderr)
	}
	if code, _, _ := runCLI(t, nil); code != exitConfig {
		t.Errorf("no command: code %d, want %d", code, exitConfig)
	}
}

func TestFlagWinsOverEnvWinsOverDefault(t *testing.T) {
	load := func(env map[string]string, args ...string) Config {
		t.Helper()
		fs := (&cli{stderr: &bytes.Buffer{}}).flagSet("run", "", "", forRun)
		cf := bindConfig(fs, forRun)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		cfg, err := cf.load(envMap(env))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	def := load(nil)
	want := Config{RealtimeMode: "broadcast", Interface: "wg0", WGMode: "auto", PrivateKeyFile: "/var/lib/waylume/private.key",
		ResyncInterval: 60 * time.Second, UsageInterval: 60 * time.Second, MetricsAddr: "127.0.0.1:9586",
		LogLevel: "info", LogFormat: "json", Isolation: true, TeardownOnExit: false}
	if diff := cmp.Diff(want, def, cmp.AllowUnexported(Config{})); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	env := map[string]string{"WAYLUME_WG_MODE": "kernel", "WAYLUME_INTERFACE": "wg7", "WAYLUME_CLIENT_ISOLATION": "false",
		"WAYLUME_SUPABASE_KEY": "anon", "WAYLUME_RESYNC_INTERVAL": "5m"}
	got := load(env, "--wg-mode", "userspace", "--teardown-on-exit")
	if got.WGMode != "userspace" || got.Interface != "wg7" || got.Isolation || !got.TeardownOnExit || got.ResyncInterval != 5*time.Minute {
		t.Errorf("precedence: got %+v", got)
	}
	if got.AccessToken != "anon" {
		t.Errorf("access token defaults to the Supabase key: got %q", got.AccessToken)
	}
	if got := load(map[string]string{"WAYLUME_SUPABASE_KEY": "anon", "WAYLUME_ACCESS_TOKEN": "jwt"}); got.AccessToken != "jwt" {
		t.Errorf("explicit access token: got %q", got.AccessToken)
	}
	fw := load(map[string]string{"WAYLUME_ALLOW_PRIVATE": "10.20.0.0/16, fd00:1::/48", "WAYLUME_ALLOW_LOCAL": "udp/53,TCP/53,tcp/8000-8100",
		"WAYLUME_ROUTED_SUBNETS": "192.0.2.0/24"}, "--routed-subnets", "198.51.100.0/24,2001:db8:1::/48")
	wantFW := Config{
		AllowPrivate:  []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("fd00:1::/48")},
		AllowLocal:    []netctl.Service{{Proto: "udp", From: 53, To: 53}, {Proto: "tcp", From: 53, To: 53}, {Proto: "tcp", From: 8000, To: 8100}},
		RoutedSubnets: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::/48")},
	}
	n := fw.node()
	if diff := cmp.Diff(wantFW, Config{AllowPrivate: n.AllowPrivate, AllowLocal: n.AllowLocal, RoutedSubnets: n.RoutedSubnets},
		cmp.AllowUnexported(Config{}), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("firewall settings into node.Config (-want +got):\n%s", diff)
	}
	// An empty flag value is a value: it beats the environment.
	if got := load(map[string]string{"WAYLUME_METRICS_ADDR": "127.0.0.1:1"}, "--metrics-addr="); got.MetricsAddr != "" {
		t.Errorf("--metrics-addr= should disable metrics, got %q", got.MetricsAddr)
	}
}

// The metrics endpoint must not be reachable from outside by default.
func TestMetricsDefaultIsLoopback(t *testing.T) {
	host, _, err := net.SplitHostPort(defaultMetricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("default metrics address %q is not loopback", defaultMetricsAddr)
	}
}

// Every environment variable of docs/contract.md ("Settings")
// is documented in --help with its default.
func TestHelpListsEveryEnvVar(t *testing.T) {
	code, out, _ := runCLI(t, nil, "--help")
	if code != exitOK {
		t.Fatalf("--help exit %d", code)
	}
	contract := map[string]string{
		"WAYLUME_DATABASE_URL": `""`, "WAYLUME_NODE_ID": `""`, "WAYLUME_REALTIME_URL": `""`, "WAYLUME_REALTIME_MODE": "broadcast",
		"WAYLUME_SUPABASE_KEY": `""`, "WAYLUME_ACCESS_TOKEN": `""`, "WAYLUME_ACCESS_TOKEN_FILE": `""`, "WAYLUME_INTERFACE": "wg0",
		"WAYLUME_WG_MODE": "auto", "WAYLUME_PRIVATE_KEY_FILE": "/var/lib/waylume/private.key", "WAYLUME_STATE_DIR": `""`,
		"WAYLUME_EGRESS_INTERFACE": `""`, "WAYLUME_RESYNC_INTERVAL": "60s", "WAYLUME_USAGE_INTERVAL": "60s",
		"WAYLUME_METRICS_ADDR": "127.0.0.1:9586", "WAYLUME_LOG_LEVEL": "info", "WAYLUME_LOG_FORMAT": "json",
		"WAYLUME_CLIENT_ISOLATION": "true", "WAYLUME_TEARDOWN_ON_EXIT": "false",
		"WAYLUME_ALLOW_PRIVATE": `""`, "WAYLUME_ALLOW_LOCAL": `""`, "WAYLUME_ROUTED_SUBNETS": `""`,
		"WAYLUME_SUPABASE_URL": `""`, "WAYLUME_AUTH_EMAIL": `""`, "WAYLUME_AUTH_PASSWORD_FILE": `""`,
	}
	for env, def := range contract {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, " "+env+" ") {
				line = l
			}
		}
		if line == "" {
			t.Errorf("--help does not list %s", env)
			continue
		}
		if !strings.HasSuffix(line, "default "+def) {
			t.Errorf("--help line for %s does not end with default %s: %q", env, def, line)
		}
	}
	// And nothing in the settings table escapes the contract list.
	for _, s := range settings() {
		if _, ok := contract[s.env]; !ok {
			t.Errorf("setting %s is not in this test's list: add it (and to the README)", s.env)
		}
	}
	// Each subcommand's --help lists its own settings.
	code, _, stderr := runCLI(t, nil, "run", "--help")
	if code != exitOK || !strings.Contains(stderr, "WAYLUME_RESYNC_INTERVAL") || !strings.Contains(stderr, "default 60s") {
		t.Errorf("run --help: code %d\n%s", code, stderr)
	}
}

// The local state lives beside the private key unless placed elsewhere.
func TestStateDirDefaultsToTheKeysDirectory(t *testing.T) {
	if got := (Config{PrivateKeyFile: "/var/lib/waylume/private.key"}).node().StateDir; got != "/var/lib/waylume" {
		t.Errorf("default state dir %q, want /var/lib/waylume", got)
	}
	if got := (Config{PrivateKeyFile: "/etc/wl/key", StateDir: "/srv/wl"}).node().StateDir; got != "/srv/wl" {
		t.Errorf("state dir %q, want /srv/wl", got)
	}
}
