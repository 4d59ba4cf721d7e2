package supabase_test

import (
	"os"
	"testing"

	"github.com/waylume/waylume-node/internal/pgtest"
)

// The package's one TestMain: store, listen and realtime tests share the
// throwaway cluster.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
