package main

import (
	"os"
	"testing"

	"github.com/waylume/waylume-node/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
