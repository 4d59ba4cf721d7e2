// Package auth gives the node its Realtime access token and keeps it
// valid while the node runs.
//
//   - SessionSource: the node is a Supabase Auth user; it signs in with
//     the password grant and refreshes before expiry (single-use refresh
//     tokens within Auth's reuse window, a password sign-in when a refresh
//     is refused), backing off with jitter while Auth is unreachable.
//   - TokenFile: a token the operator minted (`waylume-node token`), read
//     from a file that is reread so a replaced file reaches the live
//     channel without a restart.
//
// Client is the Auth API: the grants, and the admin users API the
// operator's `node create` and `node revoke` use with a secret key.
// Package authtest is a stand-in Auth server for tests.
//
// Start picks one from the node's settings. Every source calls its
// OnChange function with each new token; the node pushes it to the joined
// channel, which needs no rejoin. Tokens, keys and passwords never appear
// in a log line or an error.
package auth
