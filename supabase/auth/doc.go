// Package auth gives the node its Realtime access token and keeps it
// valid while the node runs.
//
//   - TokenFile: a token the operator minted (`waylume-node token`), read
//     from a file that is reread so a replaced file reaches the live
//     channel without a restart.
//
// Every source calls its OnChange function with each new token; the node
// pushes it to the joined channel, which needs no rejoin. Tokens, keys and
// passwords never appear in a log line or an error.
package auth
