// Package testkit holds the helpers every test package shares: polling a
// condition with a deadline, a buffer safe to write from a background
// process while a test reads it, and tokens signed the way Supabase signs
// them. Production code never imports it.
package testkit
