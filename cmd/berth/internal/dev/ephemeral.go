package dev

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berthdev/berth/pkg/descriptor"
)

// appStopTimeout bounds one app's stop script when --ephemeral removes the data.
const appStopTimeout = 5 * time.Second

// stopApps runs the stop script of every current release under the agent's apps directory
// (<service path>/current -> releases/<version>). The agent never owns app processes, so
// they outlive berth dev; --ephemeral calls this before it removes the data directory, so
// that no app keeps running from a directory that is gone.
func stopApps(ctx context.Context, appsDir string, out io.Writer) {
	_ = filepath.WalkDir(appsDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p != appsDir && (d.Name() == "releases" || strings.HasPrefix(d.Name(), ".")) {
			return fs.SkipDir
		}
		if d.Name() != "current" || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		svc, err := filepath.Rel(appsDir, filepath.Dir(p))
		if err != nil {
			return nil
		}
		rel, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil
		}
		if err := stopRelease(ctx, svc, rel); err != nil {
			fmt.Fprintf(out, "could not stop %s (%s): %v\n", svc, rel, err)
			return nil
		}
		fmt.Fprintf(out, "stopped %s (--ephemeral removes its release)\n", svc)
		return nil
	})
}

// stopRelease runs a release's stop script as the agent does: in the release directory,
// without a shell, with the BERTH_* environment.
func stopRelease(ctx context.Context, svc, dir string) error {
	desc, err := descriptor.Load(filepath.Join(dir, "berth.yaml"))
	if err != nil {
		return err
	}
	args := strings.Fields(desc.Scripts.Stop)
	if len(args) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, appStopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, args[0]), args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "BERTH_SERVICE="+svc, "BERTH_VERSION="+filepath.Base(dir), "BERTH_RELEASE_DIR="+dir,
		"BERTH_PORT="+strconv.Itoa(desc.Port), "BERTH_SCRIPT=stop")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}
