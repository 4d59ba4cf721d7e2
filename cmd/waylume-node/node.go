package main

// Operator commands for node rows and their credentials: flags and output
// around package provision (nodeauth.go: Auth users and revocation).

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/waylume/waylume-node/internal/parse"
	"github.com/waylume/waylume-node/internal/provision"
	"github.com/waylume/waylume-node/migrations"
)

func (c *cli) nodeCmd(args []string) int {
	sub := map[string]func(*cli, []string) int{
		"create": (*cli).nodeCreate, "login": (*cli).nodeLogin, "auth": (*cli).nodeAuth, "revoke": (*cli).nodeRevoke,
	}
	if len(args) == 0 || sub[args[0]] == nil {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(c.stdout, nodeUsage)
			return exitOK
		}
		fmt.Fprint(c.stderr, nodeUsage)
		return exitConfig
	}
	return sub[args[0]](c, args[1:])
}

const nodeUsage = `Usage:
  waylume-node node create --name NAME --endpoint HOST:PORT --address 10.8.0.1/16 [flags]
      insert a row into waylume.nodes (waylume.create_node) and print its id;
      --auth-email also makes its Auth user (see auth); --login-password-file also
      creates its database login role (see login)
  waylume-node node auth --node-id ID --auth-email EMAIL --env-file FILE
      create the node's Supabase Auth user (Admin API, secret key) with
      app_metadata.node_id, a confirmed email and a random password; write the
      node's settings to FILE and the password to FILE.password (both 0600)
  waylume-node node login --node-id ID [--password-file FILE]
      create (or reset) the node's database login role waylume_node_<hex id> with a
      random password and print the role name; the password goes to FILE (mode 0600),
      or is printed as the second line
  waylume-node node revoke --node-id ID
      waylume.revoke_node: the node's tokens so far, its login role and (Auth in the
      database, or a secret key given) its Auth users stop working at once; the node
      keeps serving its current peers
create, login and revoke need the owner's credentials in WAYLUME_DATABASE_URL; auth
and revoke use WAYLUME_SUPABASE_URL with a secret key (--secret-key-file, or
WAYLUME_SUPABASE_SECRET_KEY holding it).
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
	af := bindAuthFlags(fs)
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	n := provision.Node{LoginPasswordFile: *pwFile}
	var err error
	if n.Spec, err = nf.spec(); err == nil && *af.email != "" {
		n.Auth, err = c.authUser(cfg, af)
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node: %s\n", err)
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	made, err := provision.Create(ctx, cfg.DatabaseURL, n)
	if made.ID != "" {
		fmt.Fprintln(c.stdout, made.ID)
	}
	if made.Login != "" {
		fmt.Fprintf(c.stderr, "login role %s; password in %s\n", made.Login, *pwFile)
	}
	if err != nil {
		return c.fail("node create", err)
	}
	if made.User != nil {
		c.userMade(cfg, made.ID, *made.User)
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
	if !parse.IsUUID(strings.ToLower(*nodeID)) {
		fmt.Fprintln(c.stderr, "waylume-node: invalid --node-id: not a UUID (waylume.nodes.id)")
		return exitConfig
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	login, err := provision.NewLogin(ctx, cfg.DatabaseURL, strings.ToLower(*nodeID), *pwFile)
	if err != nil {
		return c.fail("node login", err)
	}
	fmt.Fprintln(c.stdout, login.Role)
	if *pwFile == "" {
		fmt.Fprintln(c.stdout, login.Password)
		fmt.Fprintln(c.stderr, "line 2 is the password: store it now (the node's WAYLUME_DATABASE_URL); it is kept nowhere else")
	}
	return exitOK
}

// fail prints a subcommand's failure as its one line: exit 1.
func (c *cli) fail(name string, err error) int {
	fmt.Fprintf(c.stderr, "waylume-node %s: %s\n", name, oneLine(err.Error()))
	return exitFail
}
