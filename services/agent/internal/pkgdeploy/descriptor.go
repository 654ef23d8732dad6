package pkgdeploy

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/berthdev/berth/pkg/descriptor"
)

// DescriptorFile is the descriptor's name at the package root.
const DescriptorFile = "berth.yaml"

// Descriptor is a package's parsed berth.yaml (pkg/descriptor), defaults applied.
type Descriptor = descriptor.Descriptor

// scriptOf returns the path in the package of one of the four scripts, or "".
func scriptOf(d *Descriptor, which string) string {
	switch which {
	case "start":
		return d.Scripts.Start
	case "stop":
		return d.Scripts.Stop
	case "health":
		return d.Scripts.Health
	case "reload":
		return d.Scripts.Reload
	}
	return ""
}

// loadDescriptor reads dir/berth.yaml strictly and checks that its scripts are in the
// package and executable; a bad descriptor fails the step with every problem, each naming
// the file and line.
func loadDescriptor(dir string) (*Descriptor, error) {
	data, err := readLimited(filepath.Join(dir, DescriptorFile), descriptor.MaxSize+1)
	if errors.Is(err, os.ErrNotExist) {
		return nil, bad("the package has no %s at its root", DescriptorFile)
	}
	if err != nil {
		return nil, hostFailure("read %s: %v", DescriptorFile, err)
	}
	// Errors name berth.yaml as the package author knows it, not the agent's copy.
	d, err := descriptor.Parse(DescriptorFile, data)
	if err != nil {
		return nil, bad("bad descriptor: %v", err)
	}
	if err := d.CheckFiles(os.DirFS(dir)); err != nil {
		return nil, bad("bad package: %v", err)
	}
	return d, nil
}

// readLimited reads at most n bytes of a file.
func readLimited(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}
