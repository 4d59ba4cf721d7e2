package main

// Settings: every one is a flag and a WAYLUME_* environment variable; a flag
// wins over the environment, the environment over the default. The table
// below is the single source for parsing, validation messages and --help, so
// a setting cannot exist in one place and be missing from another.

import (
	"flag"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/parse"
	"github.com/waylume/waylume-node/netctl"
	"github.com/waylume/waylume-node/supabase"
	"github.com/waylume/waylume-node/supabase/auth"
	"github.com/waylume/waylume-node/supabase/realtime"
)

// Config is every setting of the node. Validate has checked it before
// anything starts; Config.node hands the run command's share to package node.
type Config struct {
	DatabaseURL      string
	NodeID           string
	SupabaseURL      string // project URL: Auth, and Realtime's URL unless RealtimeURL is set
	RealtimeURL      string // empty: LISTEN/NOTIFY on the database connection
	RealtimeMode     string // "broadcast" or "postgres_changes"
	SupabaseKey      string // apikey for Auth and Realtime (publishable or legacy anon)
	AccessToken      string // Realtime JWT; defaults to a legacy JWT SupabaseKey; a secret
	AccessTokenFile  string // file holding AccessToken, reread while running (rotation)
	AuthEmail        string // the node's Supabase Auth user
	AuthPassword     string // read from AuthPasswordFile; a secret
	AuthPasswordFile string
	Interface        string
	WGMode           string // "auto", "kernel" or "userspace"
	PrivateKeyFile   string
	StateDir         string // empty: the private key file's directory
	EgressInterface  string // empty: from the default route
	ResyncInterval   time.Duration
	UsageInterval    time.Duration
	MetricsAddr      string // empty: no metrics server
	LogLevel         string
	LogFormat        string
	Isolation        bool // client-to-client traffic blocked
	TeardownOnExit   bool // remove interface, tc and chains on exit instead of leaving peers up
	// AllowPrivate are non-global destinations clients may reach;
	// AllowLocal the node's ports they may reach; RoutedSubnets the sources
	// besides the pools forwarded from the tunnel (docs/dataplane.md).
	AllowPrivate  []netip.Prefix
	AllowLocal    []netctl.Service
	RoutedSubnets []netip.Prefix

	// need lists the settings the running subcommand requires.
	need map[string]bool
}

// Subcommands a setting applies to, for --help and flag registration.
const (
	forRun = 1 << iota
	forMigrate
	forCheck
	forStatus
	forNode
	forHealth
	forPeer
	forPlan
)

type setting struct {
	flag  string
	env   string
	def   string
	help  string
	scope int
	bool  bool // a boolean flag (--flag means true)
	// set parses v into c; the error is a short reason without the value
	// (values may be secrets).
	set func(c *Config, v string) error
}

const (
	defaultInterface      = "wg0"
	defaultPrivateKeyFile = "/var/lib/waylume/private.key"
	defaultMetricsAddr    = "127.0.0.1:9586"
)

func settings() []setting {
	all := forRun | forMigrate | forCheck | forStatus | forNode | forHealth | forPeer | forPlan
	return []setting{
		{flag: "database-url", env: "WAYLUME_DATABASE_URL", def: "", scope: all &^ forHealth,
			help: "Postgres URL (Supabase direct connection or session pooler)",
			set:  func(c *Config, v string) error { c.DatabaseURL = v; return nil }},
		{flag: "node-id", env: "WAYLUME_NODE_ID", def: "", scope: forRun | forCheck | forStatus | forPlan,
			help: "waylume.nodes.id of this node (required for run)",
			set:  func(c *Config, v string) error { c.NodeID = strings.ToLower(v); return nil }},
		{flag: "supabase-url", env: "WAYLUME_SUPABASE_URL", def: "", scope: forRun | forCheck | forNode,
			help: "project URL https://<ref>.supabase.co: Auth for the node's identity, and Realtime (wss://<ref>.supabase.co/realtime/v1/websocket) unless --realtime-url is set",
			set:  func(c *Config, v string) error { c.SupabaseURL = strings.TrimRight(v, "/"); return nil }},
		{flag: "realtime-url", env: "WAYLUME_REALTIME_URL", def: "", scope: forRun | forCheck,
			help: "Supabase Realtime websocket URL; default: derived from --supabase-url; both empty = LISTEN/NOTIFY on the database connection",
			set:  func(c *Config, v string) error { c.RealtimeURL = v; return nil }},
		{flag: "realtime-mode", env: "WAYLUME_REALTIME_MODE", def: "broadcast", scope: forRun | forCheck,
			help: "broadcast (the node's private topic, fed by the database's triggers) or postgres_changes",
			set:  func(c *Config, v string) error { c.RealtimeMode = v; return nil }},
		{flag: "supabase-key", env: "WAYLUME_SUPABASE_KEY", def: "", scope: forRun | forCheck | forNode,
			help: "the project's publishable key (sb_publishable_..., or the legacy anon key): apikey for Auth and Realtime",
			set:  func(c *Config, v string) error { c.SupabaseKey = v; return nil }},
		{flag: "auth-email", env: "WAYLUME_AUTH_EMAIL", def: "", scope: forRun | forCheck,
			help: "the node's Supabase Auth user (from `waylume-node node create --auth-email`): signs in, renews its token itself",
			set:  func(c *Config, v string) error { c.AuthEmail = v; return nil }},
		{flag: "auth-password-file", env: "WAYLUME_AUTH_PASSWORD_FILE", def: "", scope: forRun | forCheck,
			help: "file holding the Auth user's password (mode 0600)",
			set:  func(c *Config, v string) error { c.AuthPasswordFile = v; return nil }},
		{flag: "access-token", env: "WAYLUME_ACCESS_TOKEN", def: "", scope: forRun | forCheck,
			help: "JWT for Realtime RLS, from `waylume-node token` (default: the Supabase key)",
			set:  func(c *Config, v string) error { c.AccessToken = v; return nil }},
		{flag: "access-token-file", env: "WAYLUME_ACCESS_TOKEN_FILE", def: "", scope: forRun | forCheck,
			help: "file holding the Realtime JWT instead of --access-token; reread every 30s, a new token is pushed to the live channel",
			set:  func(c *Config, v string) error { c.AccessTokenFile = v; return nil }},
		{flag: "interface", env: "WAYLUME_INTERFACE", def: defaultInterface, scope: forRun | forCheck | forStatus | forPlan,
			help: "WireGuard interface name",
			set:  func(c *Config, v string) error { c.Interface = v; return nil }},
		{flag: "wg-mode", env: "WAYLUME_WG_MODE", def: "auto", scope: forRun | forCheck,
			help: "kernel, userspace (embedded wireguard-go) or auto",
			set:  func(c *Config, v string) error { c.WGMode = v; return nil }},
		{flag: "private-key-file", env: "WAYLUME_PRIVATE_KEY_FILE", def: defaultPrivateKeyFile, scope: forRun,
			help: "node private key; created 0600 if absent; never leaves the host",
			set:  func(c *Config, v string) error { c.PrivateKeyFile = v; return nil }},
		{flag: "state-dir", env: "WAYLUME_STATE_DIR", def: "", scope: forRun,
			help: "directory of the saved desired state, served when the database is unreachable at start (0600, holds preshared keys); empty = the private key file's directory",
			set:  func(c *Config, v string) error { c.StateDir = v; return nil }},
		{flag: "egress-interface", env: "WAYLUME_EGRESS_INTERFACE", def: "", scope: forRun | forCheck | forPlan,
			help: "NAT uplink interface (default: the default route's)",
			set:  func(c *Config, v string) error { c.EgressInterface = v; return nil }},
		{flag: "resync-interval", env: "WAYLUME_RESYNC_INTERVAL", def: "60s", scope: forRun,
			help: "full reconcile period",
			set:  func(c *Config, v string) (err error) { c.ResyncInterval, err = parse.Interval(v); return err }},
		{flag: "usage-interval", env: "WAYLUME_USAGE_INTERVAL", def: "60s", scope: forRun,
			help: "usage flush period",
			set:  func(c *Config, v string) (err error) { c.UsageInterval, err = parse.Interval(v); return err }},
		{flag: "metrics-addr", env: "WAYLUME_METRICS_ADDR", def: defaultMetricsAddr, scope: forRun | forHealth,
			help: "listen address for /metrics, /healthz, /readyz; empty disables",
			set:  func(c *Config, v string) error { c.MetricsAddr = v; return nil }},
		{flag: "log-level", env: "WAYLUME_LOG_LEVEL", def: "info", scope: all,
			help: "debug, info, warn or error",
			set:  func(c *Config, v string) error { c.LogLevel = strings.ToLower(v); return nil }},
		{flag: "log-format", env: "WAYLUME_LOG_FORMAT", def: "json", scope: all,
			help: "json or text",
			set:  func(c *Config, v string) error { c.LogFormat = strings.ToLower(v); return nil }},
		{flag: "client-isolation", env: "WAYLUME_CLIENT_ISOLATION", def: "true", scope: forRun | forPlan, bool: true,
			help: "block client-to-client traffic",
			set:  func(c *Config, v string) (err error) { c.Isolation, err = parse.Bool(v); return err }},
		{flag: "allow-private", env: "WAYLUME_ALLOW_PRIVATE", def: "", scope: forRun | forPlan,
			help: "comma-separated prefixes clients may reach although not global (e.g. 10.20.0.0/16,fd00:1::/48); by default only the internet",
			set:  func(c *Config, v string) (err error) { c.AllowPrivate, err = parse.Prefixes(v); return err }},
		{flag: "allow-local", env: "WAYLUME_ALLOW_LOCAL", def: "", scope: forRun | forPlan,
			help: "node ports clients may reach through the tunnel, e.g. udp/53,tcp/53 or tcp/8000-8100; by default none (ping is answered)",
			set:  func(c *Config, v string) (err error) { c.AllowLocal, err = netctl.ParseServices(v); return err }},
		{flag: "routed-subnets", env: "WAYLUME_ROUTED_SUBNETS", def: "", scope: forRun | forPlan,
			help: "comma-separated source prefixes, besides the pools, forwarded from the tunnel un-NATed (networks behind peers); other sources are dropped",
			set:  func(c *Config, v string) (err error) { c.RoutedSubnets, err = parse.RoutedSubnets(v); return err }},
		{flag: "teardown-on-exit", env: "WAYLUME_TEARDOWN_ON_EXIT", def: "false", scope: forRun, bool: true,
			help: "on exit remove the interface, tc and firewall chains (default: leave peers up so sessions survive a restart)",
			set:  func(c *Config, v string) (err error) { c.TeardownOnExit, err = parse.Bool(v); return err }},
	}
}

// configError is a bad setting: one line naming it. Exit code 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func settingErr(s setting, format string, args ...any) error {
	return &configError{fmt.Sprintf("invalid --%s (%s): %s", s.flag, s.env, fmt.Sprintf(format, args...))}
}

func missingErr(s setting) error {
	return &configError{fmt.Sprintf("missing --%s (%s): required", s.flag, s.env)}
}

// strFlag records whether a flag was given so the environment is used
// only when it was not.
type strFlag struct {
	val    string
	given  bool
	isBool bool
}

func (f *strFlag) String() string     { return f.val }
func (f *strFlag) Set(v string) error { f.val, f.given = v, true; return nil }
func (f *strFlag) IsBoolFlag() bool   { return f.isBool }

// configFlags holds a subcommand's registered settings until Load.
type configFlags struct {
	scope int
	vals  map[string]*strFlag
}

// bindConfig registers the settings of one subcommand on fs.
func bindConfig(fs *flag.FlagSet, scope int) *configFlags {
	cf := &configFlags{scope: scope, vals: map[string]*strFlag{}}
	for _, s := range settings() {
		if s.scope&scope == 0 {
			continue
		}
		v := &strFlag{isBool: s.bool}
		cf.vals[s.flag] = v
		fs.Var(v, s.flag, fmt.Sprintf("%s (env %s, default %q)", s.help, s.env, s.def))
	}
	return cf
}

// load builds the Config from flags, then the environment, then defaults,
// and checks each value's format. Settings outside the subcommand's scope
// keep their defaults.
func (cf *configFlags) load(getenv func(string) (string, bool)) (Config, error) {
	var c Config
	for _, s := range settings() {
		v := s.def
		if f, ok := cf.vals[s.flag]; ok {
			if env, ok := getenv(s.env); ok {
				v = env
			}
			if f.given {
				v = f.val
			}
		}
		if err := s.set(&c, v); err != nil {
			return Config{}, settingErr(s, "%v", err)
		}
	}
	if c.AccessTokenFile != "" {
		if c.AccessToken != "" {
			return Config{}, &configError{"invalid --access-token-file (WAYLUME_ACCESS_TOKEN_FILE): set either it or --access-token (WAYLUME_ACCESS_TOKEN), not both"}
		}
		tok, err := auth.ReadTokenFile(c.AccessTokenFile)
		if err != nil {
			return Config{}, &configError{"invalid --access-token-file (WAYLUME_ACCESS_TOKEN_FILE): " + err.Error()}
		}
		c.AccessToken = tok
	}
	if c.AuthPasswordFile != "" {
		pw, err := auth.ReadSecretFile(c.AuthPasswordFile)
		if err != nil {
			return Config{}, &configError{"invalid --auth-password-file (WAYLUME_AUTH_PASSWORD_FILE): " + err.Error()}
		}
		c.AuthPassword = pw
	}
	if c.RealtimeURL == "" && c.SupabaseURL != "" && cf.scope&(forRun|forCheck) != 0 {
		c.RealtimeURL = supabase.RealtimeURL(c.SupabaseURL)
	}
	// A legacy anon key is a JWT and may stand in for the token; an sb_
	// key never is one.
	if c.AccessToken == "" && c.AuthEmail == "" && !strings.HasPrefix(c.SupabaseKey, "sb_") {
		c.AccessToken = c.SupabaseKey
	}
	return c, nil
}

// requireFor marks the settings a subcommand cannot do without.
func (c *Config) requireFor(flags ...string) {
	c.need = map[string]bool{}
	for _, f := range flags {
		c.need[f] = true
	}
}

// Validate checks every setting and the rules between them; the first bad
// one is returned as one line naming the flag and the environment variable.
// Nothing starts on a config that fails here.
func (c Config) Validate() error {
	byFlag := map[string]setting{}
	for _, s := range settings() {
		byFlag[s.flag] = s
	}
	need := c.need
	if need == nil { // the run command's requirements
		need = map[string]bool{"database-url": true, "node-id": true}
	}
	for _, name := range []string{"database-url", "node-id", "private-key-file", "interface"} {
		if need[name] && fieldOf(&c, name) == "" {
			return missingErr(byFlag[name])
		}
	}
	check := func(flag, v string, ok func(string) error) error {
		if err := ok(v); err != nil {
			return settingErr(byFlag[flag], "%v", err)
		}
		return nil
	}
	for _, err := range []error{
		check("database-url", c.DatabaseURL, parse.Optional(supabase.CheckDatabaseURL)),
		check("node-id", c.NodeID, parse.Optional(parse.CheckUUID)),
		c.validateIdentity(byFlag),
		check("realtime-mode", c.RealtimeMode, parse.OneOf("mode", "broadcast", "postgres_changes")),
		check("interface", c.Interface, parse.CheckIfname),
		check("egress-interface", c.EgressInterface, parse.Optional(parse.CheckIfname)),
		check("wg-mode", c.WGMode, parse.OneOf("mode", "auto", "kernel", "userspace")),
		check("metrics-addr", c.MetricsAddr, parse.Optional(parse.CheckListenAddr)),
		check("log-level", c.LogLevel, parse.OneOf("level", "debug", "info", "warn", "error")),
		check("log-format", c.LogFormat, parse.OneOf("format", "json", "text")),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// validateIdentity checks the project URL, Realtime and the node's
// identity there: an Auth user, or a minted token, never an sb_ key as a
// token.
func (c Config) validateIdentity(byFlag map[string]setting) error {
	if c.SupabaseURL != "" {
		if u, err := url.Parse(c.SupabaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return settingErr(byFlag["supabase-url"], "want the project URL, https://<ref>.supabase.co")
		}
	}
	if c.RealtimeURL != "" {
		if err := realtime.CheckURL(c.RealtimeURL); err != nil {
			return settingErr(byFlag["realtime-url"], "%v", err)
		}
		if c.SupabaseKey == "" && c.SupabaseURL != "" {
			return &configError{"missing --supabase-key (WAYLUME_SUPABASE_KEY): required with --supabase-url (the publishable key)"}
		}
		if c.SupabaseKey == "" {
			return &configError{"missing --supabase-key (WAYLUME_SUPABASE_KEY): required when --realtime-url is set"}
		}
	}
	switch {
	case strings.HasPrefix(c.AccessToken, "sb_"):
		return &configError{"invalid --access-token (WAYLUME_ACCESS_TOKEN): an sb_ API key is not an access token; use an Auth user (--auth-email) or a token from `waylume-node token`"}
	case c.AuthEmail != "" && (c.AccessToken != "" || c.AccessTokenFile != ""):
		return &configError{"invalid --auth-email (WAYLUME_AUTH_EMAIL): set either it or --access-token(-file), not both"}
	case c.AuthEmail != "" && c.AuthPassword == "":
		return &configError{"missing --auth-password-file (WAYLUME_AUTH_PASSWORD_FILE): required with --auth-email"}
	case c.AuthEmail != "" && c.SupabaseURL == "":
		return &configError{"missing --supabase-url (WAYLUME_SUPABASE_URL): required with --auth-email (Auth lives there)"}
	case c.AuthEmail != "" && c.SupabaseKey == "":
		return &configError{"missing --supabase-key (WAYLUME_SUPABASE_KEY): required with --auth-email"}
	case c.RealtimeURL != "" && c.AccessToken == "" && c.AuthEmail == "":
		return &configError{"missing the node's Realtime identity: set --auth-email and --auth-password-file (WAYLUME_AUTH_EMAIL, WAYLUME_AUTH_PASSWORD_FILE), or --access-token-file"}
	}
	return nil
}

func fieldOf(c *Config, flag string) string {
	switch flag {
	case "database-url":
		return c.DatabaseURL
	case "node-id":
		return c.NodeID
	case "private-key-file":
		return c.PrivateKeyFile
	case "interface":
		return c.Interface
	}
	return ""
}

// printSettings writes the settings table of a scope for --help.
func printSettings(w io.Writer, scope int) {
	for _, s := range settings() {
		if s.scope&scope == 0 {
			continue
		}
		def := s.def
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  --%-18s %-26s default %s\n      %s\n", s.flag, s.env, def, s.help)
	}
}
