package main

// Operator commands for node rows and their credentials. The SQL lives
// with the schema (migrations.CreateNode, migrations.CreateNodeLogin);
// this is flags, the password file and output.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/waylume/waylume-node/migrations"
	"github.com/waylume/waylume-node/supabase"
)

func (c *cli) nodeCmd(args []string) int {
	if len(args) == 0 || (args[0] != "create" && args[0] != "login") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(c.stdout, nodeUsage)
			return exitOK
		}
		fmt.Fprint(c.stderr, nodeUsage)
		return exitConfig
	}
	if args[0] == "create" {
		return c.nodeCreate(args[1:])
	}
	return c.nodeLogin(args[1:])
}

const nodeUsage = `Usage:
  waylume-node node create --name NAME --endpoint HOST:PORT --address 10.8.0.1/16 [flags]
      insert a row into waylume.nodes (waylume.create_node) and print its id;
      --login-password-file also creates the node's login role (see login)
  waylume-node node login --node-id ID [--password-file FILE]
      create (or reset) the node's database login role waylume_node_<hex id> with a
      random password and print the role name; the password goes to FILE (mode 0600),
      or is printed as the second line
Both need the owner's or service credentials in WAYLUME_DATABASE_URL.
`

// nodeFlags are node create's own flags, as given.
type nodeFlags struct {
	name, endpoint, address, address6, dns *string
	port, mtu                              *int
}

func (f nodeFlags) spec() (migrations.NodeSpec, error) {
	n := migrations.NodeSpec{Name: *f.name, Endpoint: *f.endpoint, ListenPort: *f.port, MTU: *f.mtu, DNS: []netip.Addr{}}
	if n.Name == "" {
		return n, fmt.Errorf("missing --name: required")
	}
	if n.Endpoint == "" {
		return n, fmt.Errorf("missing --endpoint: required (host:port clients dial)")
	}
	var err error
	if n.Address, err = netip.ParsePrefix(*f.address); err != nil {
		return n, fmt.Errorf("invalid --address %q: want the node's address with the pool prefix, e.g. 10.8.0.1/16", *f.address)
	}
	if *f.address6 != "" {
		if n.Address6, err = netip.ParsePrefix(*f.address6); err != nil {
			return n, fmt.Errorf("invalid --address6 %q: want e.g. fd00:8::1/64", *f.address6)
		}
	}
	for _, d := range strings.Split(*f.dns, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return n, fmt.Errorf("invalid --dns %q: want IP addresses", d)
		}
		n.DNS = append(n.DNS, a)
	}
	return n, nil
}

func (c *cli) nodeCreate(args []string) int {
	fs := c.flagSet("node create", "", "Create a node row (waylume.create_node) and print its id.", forNode)
	cf := bindConfig(fs, forNode)
	nf := nodeFlags{
		name:     fs.String("name", "", "unique node name"),
		endpoint: fs.String("endpoint", "", "host:port clients dial (public address of this node)"),
		address:  fs.String("address", "", "the node's tunnel address with the pool prefix, e.g. 10.8.0.1/16"),
		address6: fs.String("address6", "", "optional IPv6 tunnel address with its pool prefix, e.g. fd00:8::1/64"),
		port:     fs.Int("listen-port", 51820, "WireGuard UDP port"),
		dns:      fs.String("dns", "", "comma-separated DNS servers for clients"),
		mtu:      fs.Int("mtu", 0, "interface MTU (0: default)"),
	}
	pwFile := fs.String("login-password-file", "", "also create the node's login role; write its password here (0600)")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	spec, err := nf.spec()
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node: %s\n", err)
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	conn, err := supabase.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node create: %s\n", oneLine(err.Error()))
		return exitFail
	}
	defer conn.Close(context.Background())
	id, err := migrations.CreateNode(ctx, conn, spec)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node create: %s\n", oneLine(err.Error()))
		return exitFail
	}
	fmt.Fprintln(c.stdout, id)
	if *pwFile != "" {
		role, pw, err := migrations.CreateNodeLogin(ctx, conn, id)
		if err == nil {
			err = writePassword(*pwFile, pw)
		}
		if err != nil {
			fmt.Fprintf(c.stderr, "waylume-node node create: node %s created, login role failed: %s\n", id, oneLine(err.Error()))
			return exitFail
		}
		fmt.Fprintf(c.stderr, "login role %s; password in %s\n", role, *pwFile)
	}
	return exitOK
}

func (c *cli) nodeLogin(args []string) int {
	fs := c.flagSet("node login", "", "Create (or reset) a node's login role and print its name.", forNode)
	cf := bindConfig(fs, forNode)
	nodeID := fs.String("node-id", "", "the node's id")
	pwFile := fs.String("password-file", "", "write the generated password here (mode 0600) instead of stdout")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	if !uuidRE.MatchString(strings.ToLower(*nodeID)) {
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id: not a UUID (waylume.nodes.id)")
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	conn, err := supabase.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node login: %s\n", oneLine(err.Error()))
		return exitFail
	}
	defer conn.Close(context.Background())
	role, pw, err := migrations.CreateNodeLogin(ctx, conn, strings.ToLower(*nodeID))
	if err == nil && *pwFile != "" {
		err = writePassword(*pwFile, pw)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node login: %s\n", oneLine(err.Error()))
		return exitFail
	}
	fmt.Fprintln(c.stdout, role)
	if *pwFile == "" {
		fmt.Fprintln(c.stdout, pw)
		fmt.Fprintln(c.stderr, "line 2 is the password: store it now (the node's WAYLUME_DATABASE_URL); it is kept nowhere else")
	}
	return exitOK
}

// writePassword puts a generated password in its file, readable by the
// owner only: it is printed nowhere else.
func writePassword(path, password string) error {
	if err := os.WriteFile(path, []byte(password+"\n"), 0o600); err != nil {
		return fmt.Errorf("write password file: %w", err)
	}
	return nil
}
