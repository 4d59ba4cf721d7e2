package realtime

import "testing"

// The server's join error reasons (its channel's join and log_error
// texts), classified as retrying would fare.
func TestJoinErrorClasses(t *testing.T) {
	for _, tc := range []struct {
		reason               string
		permanent, rateLimit bool
	}{
		{"InvalidJWTToken: Token has expired 73 seconds ago", true, false},
		{"JwtSignatureError: Failed to validate JWT signature", true, false},
		{`JwtSignerError: Failed to generate JWT signer for key ID (kid) "k1", check your JWT secret or JWKS configuration`, true, false},
		{"JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration", true, false},
		{"MalformedJWT: The token provided is not a valid JWT", true, false},
		{"Unauthorized: You do not have permissions to read from this Channel topic: waylume:node:a", true, false},
		{"PrivateOnly: This project only allows private channels", true, false},
		{"TenantNotFound: Tenant with the given ID does not exist", true, false},
		{"TopicNameRequired: You must provide a topic name", true, false},
		{"RealtimeDisabledForTenant: Realtime disabled for this tenant", true, false},
		{"Error parsing `filter` params: [\"id\"]", true, false},
		{"ClientJoinRateLimitReached: Too many joins per second", false, true},
		{"ConnectionRateLimitReached: Too many connected users", false, true},
		{"ChannelRateLimitReached: Too many channels", false, true},
		{"DatabaseConnectionRateLimitReached: Too many database connections attempts per second", false, true},
		{"IncreaseConnectionPool: Please increase your connection pool size", false, true},
		{"DatabaseLackOfConnections: Database can't accept more connections, Realtime won't connect", false, true},
		{"InitializingProjectConnection: Realtime is initializing the project connection", false, false},
		{"UnableToConnectToProject: Realtime was unable to connect to the project database", false, false},
		{"Realtime was unable to connect to the project database", false, false},
		{"RealtimeRestarting: Realtime is restarting, please standby", false, false},
		{"MissingPartition: Realtime was unable to find the expected messages partition", false, false},
		{"TimeoutOnRpcCall: Node request timeout", false, false},
		{"Unknown Error on Channel", false, false},
	} {
		e := joinError(tc.reason)
		if e.Permanent != tc.permanent || e.RateLimited != tc.rateLimit {
			t.Errorf("%q: permanent %v, rate-limited %v; want %v, %v", tc.reason, e.Permanent, e.RateLimited, tc.permanent, tc.rateLimit)
		}
	}
	if joinError("JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS configuration").Hint() == "" {
		t.Error("JwtSignerError without a hint")
	}
}

// System errors before the server closes a channel: those that blame the
// token or its permissions make the close permanent.
func TestChannelCloseClasses(t *testing.T) {
	for msg, want := range map[string]bool{
		"Token has expired 0 seconds ago": true,
		":signature_error":                true,
		":error_generating_signer":        true,
		`Failed to generate JWT signer for key ID (kid) "k1", check your JWT secret or JWKS configuration`: true,
		"Fields `role` and `exp` are required in JWT":                                                      true,
		"You no longer have permission to read from this Channel topic: waylume:node:a":                    true,
		"Realtime was unable to connect to the project database":                                           false,
		"Query was cancelled, please try again":                                                            false,
		"Node request timeout":                                                                             false,
		"Too many messages per second":                                                                     false,
	} {
		if got := tokenProblem(msg); got != want {
			t.Errorf("%q: permanent %v, want %v", msg, got, want)
		}
	}
}
