package realtime

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/waylume/waylume-node/events"
)

func TestNewValidates(t *testing.T) {
	sink := events.SinkFunc(func(events.Event) {})
	ok := Config{URL: "wss://x.supabase.co/realtime/v1/websocket", APIKey: "k", NodeID: nodeID}
	for name, mod := range map[string]func(*Config){
		"no url":    func(c *Config) { c.URL = "" },
		"bad url":   func(c *Config) { c.URL = "ftp://x" },
		"no host":   func(c *Config) { c.URL = "wss:///realtime" },
		"no key":    func(c *Config) { c.APIKey = "" },
		"no node":   func(c *Config) { c.NodeID = "" },
		"bad node":  func(c *Config) { c.NodeID = "a,b" },
		"bad vsn":   func(c *Config) { c.VSN = "3.0.0" },
		"filter in": func(c *Config) { c.NodeID = "a.b" },
	} {
		c := ok
		mod(&c)
		if _, err := New(c, sink); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c, err := New(ok, sink)
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.VSN != VSN1 || c.cfg.HeartbeatInterval != 25*time.Second || c.cfg.JoinTimeout != 10*time.Second {
		t.Errorf("defaults: %+v", c.cfg)
	}
	if u := c.dialURL(); u != "wss://x.supabase.co/realtime/v1/websocket?apikey=k&vsn=1.0.0" {
		t.Errorf("dial URL %s", u)
	}
}

// A failed dial names the URL without the apikey.
func TestDialErrorRedactsKey(t *testing.T) {
	c, err := New(Config{URL: "ws://127.0.0.1:1/realtime/v1/websocket", APIKey: "secret-key-value", NodeID: nodeID,
		JoinTimeout: time.Second}, events.SinkFunc(func(events.Event) {}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.session(t.Context(), 1)
	var ue *url.Error
	if !errors.As(err, &ue) {
		t.Fatalf("dial error %v: want a *url.Error", err)
	}
	if u, perr := url.Parse(ue.URL); perr != nil || u.RawQuery != "" {
		t.Errorf("dial error names %q: want the URL without its query", ue.URL)
	}
	// The text is what reaches the logs: the key must not be in it.
	if strings.Contains(err.Error(), "secret-key-value") {
		t.Fatalf("dial error %v: want an error without the key", err)
	}
}
