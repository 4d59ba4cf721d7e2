package main

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const repoRoot = "../.."

// shellWords splits a command line the way sh does for the simple commands
// used here: quotes removed, ${VAR} and $VAR replaced from vars.
func shellWords(t *testing.T, s string, vars map[string]string) []string {
	t.Helper()
	expand := func(v string) string {
		return os.Expand(v, func(k string) string {
			val, ok := vars[k]
			if !ok {
				t.Fatalf("unknown variable %s in %q", k, s)
			}
			return val
		})
	}
	var words []string
	var cur strings.Builder
	in, inWord := byte(0), false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case in == '\'':
			if ch == '\'' {
				in = 0
			} else {
				cur.WriteByte(ch)
			}
		case in == '"':
			if ch == '"' {
				in = 0
			} else {
				cur.WriteByte(ch)
			}
		case ch == '\'' || ch == '"':
			in, inWord = ch, true
		case ch == ' ' || ch == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if in != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	// Single-quoted text is not expanded by sh; none of ours holds '$' there
	// except the Makefile's, which make already expanded.
	for i, w := range words {
		words[i] = expand(w)
	}
	return words
}

// dockerBuildRun returns the Dockerfile's RUN line that runs go build.
func dockerBuildRun(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	var found []string
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "RUN "); ok && strings.Contains(rest, "go build") {
			found = append(found, strings.TrimSpace(rest))
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one RUN line with go build in the Dockerfile, found %d", len(found))
	}
	return found[0]
}

// The image builds the binary with exactly `make build`'s command.
func TestDockerfileBuildMatchesMakefile(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed: cannot read the Makefile's build command")
	}
	const version = "v9.9.9-docker"
	out, err := exec.Command("make", "-s", "-n", "-C", repoRoot, "build", "VERSION="+version, "GO=go").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	makeLine := strings.TrimSpace(string(out))
	if strings.Contains(makeLine, "\n") {
		t.Fatalf("make build runs more than one command:\n%s", makeLine)
	}
	makeWords := shellWords(t, makeLine, nil)
	dockerWords := shellWords(t, dockerBuildRun(t), map[string]string{"VERSION": version})
	if diff := cmp.Diff(makeWords, dockerWords); diff != "" {
		t.Fatalf("Dockerfile build command differs from make build (-make +docker):\n%s", diff)
	}

	// And that command produces a static binary carrying the version.
	if testing.Short() {
		return
	}
	bin := filepath.Join(t.TempDir(), "waylume-node")
	args := append([]string(nil), dockerWords...)
	var env []string
	for len(args) > 0 && regexp.MustCompile(`^[A-Z_]+=`).MatchString(args[0]) {
		env = append(env, args[0])
		args = args[1:]
	}
	for i := range args {
		if args[i] == "-o" {
			args[i+1] = bin
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked; the runtime image needs a static one")
		}
	}
	got, err := exec.Command(bin, "version").Output()
	if err != nil || strings.TrimSpace(string(got)) != "waylume-node "+version {
		t.Errorf("built binary says %q (%v), want version %s", got, err, version)
	}
}

// compose.yaml: the settings the node cannot run without, and no TCP port
// published. Read as text: no YAML library in the module, and the lines
// are simple.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		"cap_add: [NET_ADMIN]",
		"- /dev/net/tun:/dev/net/tun",
		`net.ipv4.ip_forward: "1"`,
		`net.ipv4.conf.all.src_valid_mark: "1"`,
		`- "51820:51820/udp"`,
		"wal_level=logical",
		"restart: unless-stopped",
		`test: ["CMD", "waylume-node", "healthcheck"]`,
		"env_file:",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("compose.yaml lacks %q", want)
		}
	}
	inPorts := false
	for _, line := range strings.Split(s, "\n") {
		trim := strings.TrimSpace(line)
		if trim == "ports:" {
			inPorts = true
			continue
		}
		if inPorts {
			if !strings.HasPrefix(trim, "- ") {
				inPorts = false
				continue
			}
			if !strings.HasSuffix(strings.Trim(trim, `- "`), "/udp") {
				t.Errorf("compose.yaml publishes a non-UDP port: %s", trim)
			}
		}
	}
	d, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"FROM golang:1.26", "FROM debian:bookworm-slim", "iptables iproute2 ca-certificates", `CMD ["waylume-node", "healthcheck"]`} {
		if !strings.Contains(string(d), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// yamlLine is one significant line of a YAML file: its indent and text.
type yamlLine struct {
	indent int
	text   string
}

// parseYAML reads the block-style subset of YAML that compose.yaml uses:
// maps, "- " lists (of scalars or maps), flow lists ([a, b]), quoted and
// plain scalars, comments. Scalars stay strings. Anything else (anchors,
// multi-line scalars) fails the test, so the file stays that simple.
func parseYAML(t *testing.T, src string) map[string]any {
	t.Helper()
	var lines []yamlLine
	for _, l := range strings.Split(src, "\n") {
		trim := strings.TrimSpace(l)
		if trim == "" || strings.HasPrefix(trim, "#") {
			continue
		}
		if i := strings.Index(trim, " #"); i >= 0 && !strings.ContainsAny(trim[:i], `"'`) {
			trim = strings.TrimSpace(trim[:i])
		}
		if strings.ContainsAny(trim[:1], "&*|>") || strings.Contains(trim, ": &") || strings.Contains(trim, "<<:") {
			t.Fatalf("compose.yaml: %q is beyond the YAML this test reads", trim)
		}
		lines = append(lines, yamlLine{indent: len(l) - len(strings.TrimLeft(l, " ")), text: trim})
	}
	p := &yamlParser{t: t, lines: lines}
	m, ok := p.block(0).(map[string]any)
	if !ok || p.i != len(lines) {
		t.Fatalf("compose.yaml: cannot read from line %q", lines[min(p.i, len(lines)-1)].text)
	}
	return m
}

type yamlParser struct {
	t     *testing.T
	lines []yamlLine
	i     int
}

// block reads the map or list whose lines are indented by indent.
func (p *yamlParser) block(indent int) any {
	if p.i < len(p.lines) && strings.HasPrefix(p.lines[p.i].text, "- ") {
		var list []any
		for p.i < len(p.lines) && p.lines[p.i].indent == indent && strings.HasPrefix(p.lines[p.i].text, "- ") {
			item := strings.TrimPrefix(p.lines[p.i].text, "- ")
			if k, _, ok := cutKey(item); ok && k != "" {
				// A map starting on the "- " line: its keys line up after the dash.
				p.lines[p.i] = yamlLine{indent: indent + 2, text: item}
				list = append(list, p.block(indent+2))
				continue
			}
			p.i++
			list = append(list, yamlScalar(item))
		}
		return list
	}
	m := map[string]any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent {
		k, v, ok := cutKey(p.lines[p.i].text)
		if !ok {
			p.t.Fatalf("compose.yaml: %q is not key: value", p.lines[p.i].text)
		}
		p.i++
		switch {
		case v != "":
			m[k] = yamlScalar(v)
		case p.i < len(p.lines) && p.lines[p.i].indent > indent:
			m[k] = p.block(p.lines[p.i].indent)
		default:
			m[k] = nil
		}
	}
	return m
}

// cutKey splits "key: value" (or "key:"), the key possibly quoted.
func cutKey(s string) (key, value string, ok bool) {
	if strings.HasPrefix(s, `"`) || strings.HasPrefix(s, "[") {
		return "", "", false
	}
	if k, ok := strings.CutSuffix(s, ":"); ok && !strings.Contains(k, ": ") {
		return k, "", true
	}
	k, v, ok := strings.Cut(s, ": ")
	return k, strings.TrimSpace(v), ok
}

func yamlScalar(s string) any {
	if inner, ok := strings.CutPrefix(s, "["); ok {
		var list []any
		for _, f := range strings.Split(strings.TrimSuffix(inner, "]"), ",") {
			if f = strings.TrimSpace(f); f != "" {
				list = append(list, yamlScalar(f))
			}
		}
		return list
	}
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// composeService returns one service of compose.yaml, parsed.
func composeService(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	services, _ := parseYAML(t, string(b))["services"].(map[string]any)
	svc, ok := services[name].(map[string]any)
	if !ok {
		t.Fatalf("compose.yaml has no service %q", name)
	}
	return svc
}

// The internet-facing node runs with its own credentials only and the
// least the data plane needs: NET_ADMIN, a read-only root, no privilege
// gain, the WireGuard UDP port.
func TestComposeNodeService(t *testing.T) {
	node := composeService(t, "node")
	if env, ok := node["environment"]; ok {
		t.Errorf("node service has an environment block %v: its settings and credentials come from node.env only", env)
	}
	if got := fmt.Sprint(node); strings.Contains(got, "POSTGRES_PASSWORD") || strings.Contains(got, "://") {
		t.Errorf("node service refers to the database owner's credentials: %s", got)
	}
	want := map[string]any{
		"cap_drop":     []any{"ALL"},
		"cap_add":      []any{"NET_ADMIN"},
		"read_only":    "true",
		"security_opt": []any{"no-new-privileges:true"},
		"ports":        []any{"51820:51820/udp"},
		"env_file":     []any{map[string]any{"path": "node.env", "required": "true"}},
		"command":      []any{"run"},
	}
	for k, v := range want {
		if diff := cmp.Diff(v, node[k]); diff != "" {
			t.Errorf("node service %s (-want +got):\n%s", k, diff)
		}
	}
	for _, k := range []string{"privileged", "network_mode", "pid", "ipc", "userns_mode", "cgroup_parent"} {
		if v, ok := node[k]; ok {
			t.Errorf("node service sets %s: %v", k, v)
		}
	}
	// The local database is a service of its own, reached by its socket.
	pg := composeService(t, "postgres")
	if _, ok := pg["ports"]; ok {
		t.Errorf("postgres service publishes ports: %v", pg["ports"])
	}
}
