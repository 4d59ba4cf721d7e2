// Command waylume-node is a self-managing WireGuard VPN node driven by rows
// in a Supabase (Postgres) project. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time: -ldflags '-X main.version=...'.
var version = "dev"

// Exit codes.
const (
	exitOK     = 0
	exitFail   = 1 // the command ran and failed (check found problems, the node stopped on an error)
	exitConfig = 2 // bad usage or configuration: nothing was started
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv))
}

// cli carries the process's outside world so tests can run commands
// in-process.
type cli struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	getenv func(string) (string, bool)
}

type command struct {
	name    string
	summary string
	fn      func(*cli, []string) int
}

func commands() []command {
	return []command{
		{"run", "run the node: reconcile rows into the kernel until SIGTERM/SIGINT", (*cli).runCmd},
		{"migrate", "apply the embedded SQL migrations to the database", (*cli).migrateCmd},
		{"node", "create a node row and its login role (operator, service credentials)", (*cli).nodeCmd},
		{"peer", "print a peer's client configuration (peer config <id> [--qr])", (*cli).peerCmd},
		{"check", "preflight: one line per requirement, ok or fail with the fix", (*cli).checkCmd},
		{"status", "the local interface: peers, limits, handshakes, counters (--json)", (*cli).statusCmd},
		{"plan", "what run would change in the kernel now, changing nothing (--json)", (*cli).planCmd},
		{"keygen", "generate a WireGuard private key and print its public key", (*cli).keygenCmd},
		{"token", "mint a node-scoped Realtime JWT (operator only, never on the node)", (*cli).tokenCmd},
		{"healthcheck", "GET /healthz of a running node (container HEALTHCHECK)", (*cli).healthcheckCmd},
		{"version", "print the version", (*cli).versionCmd},
		{"device", "the userspace WireGuard device process run starts (not for direct use)", (*cli).deviceCmd},
	}
}

// run is main without os.Exit, so deferred cleanup runs and tests can call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) (string, bool)) int {
	c := &cli{ctx: ctx, stdout: stdout, stderr: stderr, getenv: getenv}
	if len(args) == 0 {
		c.usage(stderr)
		return exitConfig
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		c.usage(stdout)
		return exitOK
	case "-version", "--version":
		return c.versionCmd(nil)
	}
	for _, cmd := range commands() {
		if cmd.name == args[0] {
			return cmd.fn(c, args[1:])
		}
	}
	fmt.Fprintf(stderr, "waylume-node: unknown command %q (see waylume-node --help)\n", args[0])
	return exitConfig
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprintf(w, "waylume-node %s: a self-managing WireGuard VPN node driven by a Supabase project\n\n", version)
	fmt.Fprintln(w, "Usage: waylume-node <command> [flags]   (waylume-node <command> --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, cmd := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintln(w, "\nSettings (a flag wins over its environment variable, which wins over the default):")
	printSettings(w, ^0)
	fmt.Fprintln(w, "\nExit codes: 0 ok, 1 failed, 2 bad usage or configuration.")
}

// flagSet makes a subcommand's flag set whose --help lists the settings
// with their environment variables and defaults.
func (c *cli) flagSet(name, argsUsage, summary string, scope int) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: waylume-node %s [flags]%s\n\n%s\n", name, argsUsage, summary)
		if scope != 0 {
			fmt.Fprintln(w, "\nSettings (flag, environment variable, default):")
			printSettings(w, scope)
		}
		extra := false
		fs.VisitAll(func(f *flag.Flag) {
			if _, ok := f.Value.(*strFlag); ok {
				return
			}
			if !extra {
				fmt.Fprintln(w, "\nFlags:")
				extra = true
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(w, "  --%-18s %s%s\n", f.Name, f.Usage, def)
		})
	}
	return fs
}

// parse parses a subcommand's flags and loads its config. ok false means
// the caller returns code.
func (c *cli) parse(fs *flag.FlagSet, cf *configFlags, args []string) (cfg Config, code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// --help was asked for: the usage went to stderr via fs.Output;
			// print it on stdout too is noise, so succeed quietly.
			return Config{}, exitOK, false
		}
		return Config{}, exitConfig, false // flag already printed the error and usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "waylume-node %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return Config{}, exitConfig, false
	}
	cfg, err := cf.load(c.getenv)
	if err != nil {
		c.configFail(err)
		return Config{}, exitConfig, false
	}
	return cfg, exitOK, true
}

// validate marks the settings the subcommand needs and checks the whole
// config; a bad one is reported as its one line.
func (c *cli) validate(cfg *Config, need ...string) bool {
	cfg.requireFor(need...)
	if err := cfg.Validate(); err != nil {
		c.configFail(err)
		return false
	}
	return true
}

func (c *cli) configFail(err error) {
	fmt.Fprintf(c.stderr, "waylume-node: %s\n", oneLine(err.Error()))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (c *cli) versionCmd(args []string) int {
	fmt.Fprintf(c.stdout, "waylume-node %s\n", version)
	return exitOK
}
