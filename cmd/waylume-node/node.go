package main

// Operator commands for node rows and their credentials, through the SQL
// functions of the migrations (waylume.create_node, waylume.create_node_login)
// so psql users and this command do the same thing.

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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

func (c *cli) nodeCreate(args []string) int {
	fs := c.flagSet("node create", "", "Create a node row (waylume.create_node) and print its id.", forNode)
	cf := bindConfig(fs, forNode)
	name := fs.String("name", "", "unique node name")
	endpoint := fs.String("endpoint", "", "host:port clients dial (public address of this node)")
	address := fs.String("address", "", "the node's tunnel address with the pool prefix, e.g. 10.8.0.1/16")
	address6 := fs.String("address6", "", "optional IPv6 tunnel address with its pool prefix, e.g. fd00:8::1/64")
	port := fs.Int("listen-port", 51820, "WireGuard UDP port")
	dns := fs.String("dns", "", "comma-separated DNS servers for clients")
	mtu := fs.Int("mtu", 0, "interface MTU (0: default)")
	pwFile := fs.String("login-password-file", "", "also create the node's login role; write its password here (0600)")
	cfg, code, ok := c.parse(fs, cf, args)
	if !ok {
		return code
	}
	if !c.validate(&cfg, "database-url") {
		return exitConfig
	}
	bad := func(msg string) int { fmt.Fprintf(c.stderr, "waylume-node: %s\n", msg); return exitConfig }
	if *name == "" {
		return bad("missing --name: required")
	}
	if *endpoint == "" {
		return bad("missing --endpoint: required (host:port clients dial)")
	}
	if _, err := netip.ParsePrefix(*address); err != nil {
		return bad(fmt.Sprintf("invalid --address %q: want the node's address with the pool prefix, e.g. 10.8.0.1/16", *address))
	}
	var addr6 *string
	if *address6 != "" {
		if _, err := netip.ParsePrefix(*address6); err != nil {
			return bad(fmt.Sprintf("invalid --address6 %q: want e.g. fd00:8::1/64", *address6))
		}
		addr6 = address6
	}
	dnsList := []string{}
	for _, d := range strings.Split(*dns, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if _, err := netip.ParseAddr(d); err != nil {
			return bad(fmt.Sprintf("invalid --dns %q: want IP addresses", d))
		}
		dnsList = append(dnsList, d)
	}
	var mtuArg *int
	if *mtu != 0 {
		mtuArg = mtu
	}
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	conn, err := connectDB(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node create: %s\n", oneLine(err.Error()))
		return exitFail
	}
	defer conn.Close(context.Background())
	var id string
	err = conn.QueryRow(ctx, `SELECT waylume.create_node($1, $2, $3::inet, $4::inet, $5, $6::inet[], $7)::text`,
		*name, *endpoint, *address, addr6, *port, dnsList, mtuArg).Scan(&id)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node create: %s\n", oneLine(err.Error()))
		return exitFail
	}
	fmt.Fprintln(c.stdout, id)
	if *pwFile != "" {
		role, _, err := createLogin(ctx, conn, id, *pwFile)
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
	conn, err := connectDB(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node login: %s\n", oneLine(err.Error()))
		return exitFail
	}
	defer conn.Close(context.Background())
	role, pw, err := createLogin(ctx, conn, strings.ToLower(*nodeID), *pwFile)
	if err != nil {
		fmt.Fprintf(c.stderr, "waylume-node node login: %s\n", oneLine(err.Error()))
		return exitFail
	}
	fmt.Fprintln(c.stdout, role)
	if pw != "" {
		fmt.Fprintln(c.stdout, pw)
		fmt.Fprintln(c.stderr, "line 2 is the password: store it now (the node's WAYLUME_DATABASE_URL); it is kept nowhere else")
	}
	return exitOK
}

// createLogin makes the node's login role and gives it a random password.
// Only a SCRAM verifier reaches the server (as psql's \password sends it),
// so the password is in no statement log. The password goes to pwFile
// (0600) when given, else it is returned for the caller to print once.
func createLogin(ctx context.Context, conn *pgx.Conn, nodeID, pwFile string) (role, password string, err error) {
	if err := conn.QueryRow(ctx, "SELECT waylume.create_node_login($1::uuid, NULL)", nodeID).Scan(&role); err != nil {
		return "", "", fmt.Errorf("create login: %w", err)
	}
	pw := randomPassword()
	verifier, err := scramVerifier(pw)
	if err != nil {
		return "", "", err
	}
	// The verifier is base64 and '$' only: safe inside the quotes.
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), verifier)); err != nil {
		return "", "", fmt.Errorf("set password: %w", err)
	}
	if pwFile == "" {
		return role, pw, nil
	}
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write password file: %w", err)
	}
	return role, "", nil
}

func randomPassword() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// scramVerifier computes PostgreSQL's SCRAM-SHA-256 password verifier
// (RFC 5802/7677): SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>.
// The password is ASCII, so SASLprep leaves it unchanged.
func scramVerifier(password string) (string, error) {
	const iter = 4096
	salt := make([]byte, 16)
	rand.Read(salt)
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	server := mac(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iter, enc(salt), enc(stored[:]), enc(server)), nil
}
