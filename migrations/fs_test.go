package migrations_test

import (
	"io/fs"

	"github.com/waylume/waylume-node/migrations"
)

func fsRead(name string) (string, error) {
	b, err := fs.ReadFile(migrations.Files(), name)
	return string(b), err
}
