package cmdbsync

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/berthdev/berth/proto/subjects"
)

// DevIPPool is the container address pool LocalHost gives by default: the host
// addresses of 172.30.0.0/24 but .1, which a bridge network of that subnet uses as its
// gateway.
const DevIPPool = "172.30.0.2-172.30.0.254"

// InventoryRow is one host of an inventory file, in the field names a file source reads
// by default (a YAML or JSON list of these, or a "hosts:" key holding one).
type InventoryRow struct {
	ID            string            `yaml:"id" json:"id"`
	DC            string            `yaml:"dc" json:"dc"`
	Rack          string            `yaml:"rack,omitempty" json:"rack,omitempty"`
	IP            string            `yaml:"ip,omitempty" json:"ip,omitempty"`
	CPU           float64           `yaml:"cpu" json:"cpu"`
	Memory        uint64            `yaml:"memory" json:"memory"`
	Disk          uint64            `yaml:"disk,omitempty" json:"disk,omitempty"`
	Labels        map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	MaxContainers uint32            `yaml:"max_containers,omitempty" json:"max_containers,omitempty"`
	IPPool        []string          `yaml:"ip_pool,omitempty" json:"ip_pool,omitempty"`
	State         string            `yaml:"state,omitempty" json:"state,omitempty"`
}

// LocalHostOptions tune LocalHost; every field is optional.
type LocalHostOptions struct {
	// ID is the host id; default the hostname (what berth-agent uses by default).
	ID string
	// DC is the datacenter; default "dev".
	DC string
	// IP is the host's address; default 127.0.0.1.
	IP string
	// IPPool is the container pool; default DevIPPool.
	IPPool []string
	// MaxContainers is the cap; default 64.
	MaxContainers uint32
}

// LocalHost returns the inventory row of this machine, for berth dev: its hostname, its
// CPU count and total memory measured the way berth-agent measures them (so that its
// fingerprint agrees), datacenter dev, 127.0.0.1 and a container pool.
func LocalHost(o LocalHostOptions) (InventoryRow, error) {
	if o.ID == "" {
		h, err := os.Hostname()
		if err != nil {
			return InventoryRow{}, fmt.Errorf("local host: hostname: %w", err)
		}
		o.ID = h
	}
	if err := subjects.Host(o.ID); err != nil {
		return InventoryRow{}, fmt.Errorf("local host: %w (set LocalHostOptions.ID)", err)
	}
	if o.DC == "" {
		o.DC = "dev"
	}
	if o.IP == "" {
		o.IP = "127.0.0.1"
	}
	if len(o.IPPool) == 0 {
		o.IPPool = []string{DevIPPool}
	}
	if o.MaxContainers == 0 {
		o.MaxContainers = 64
	}
	mem, err := memTotal()
	if err != nil {
		return InventoryRow{}, fmt.Errorf("local host: %w", err)
	}
	return InventoryRow{ID: o.ID, DC: o.DC, IP: o.IP, CPU: float64(runtime.NumCPU()), Memory: mem,
		MaxContainers: o.MaxContainers, IPPool: o.IPPool, Labels: map[string]string{"dev": "true"}}, nil
}

// memTotal reads MemTotal from /proc/meminfo, as berth-agent does.
func memTotal() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read memory size: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read memory size: %q: %w", sc.Text(), err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("read memory size: no MemTotal in /proc/meminfo")
}

// WriteInventoryFile writes rows as a YAML inventory file (hosts: [...]) atomically.
func WriteInventoryFile(path string, rows []InventoryRow) error {
	b, err := yaml.Marshal(map[string]any{"hosts": rows})
	if err != nil {
		return fmt.Errorf("write inventory %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".inventory-*")
	if err != nil {
		return fmt.Errorf("write inventory %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write inventory %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write inventory %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write inventory %s: %w", path, err)
	}
	return nil
}
