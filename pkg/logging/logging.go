// Package logging builds the slog logger every Berth binary uses: JSON in production, text
// in development, the level from configuration.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Config selects the format and the level.
type Config struct {
	// Format is "json" or "text".
	Format string `yaml:"format" env:"LOG_FORMAT" flag:"log-format" usage:"log format: json or text"`
	// Level is "debug", "info", "warn" or "error".
	Level string `yaml:"level" env:"LOG_LEVEL" flag:"log-level" usage:"log level: debug, info, warn or error"`
}

// Validate reports a format or level this package does not know.
func (c Config) Validate() error {
	if _, err := parseLevel(c.Level); err != nil {
		return err
	}
	switch strings.ToLower(c.Format) {
	case "", "json", "text":
		return nil
	}
	return fmt.Errorf("log format %q: want json or text", c.Format)
}

// New returns a logger writing to w. An empty format means json and an empty level info.
func New(c Config, w io.Writer) (*slog.Logger, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	lvl, _ := parseLevel(c.Level)
	opts := &slog.HandlerOptions{Level: lvl}
	if strings.ToLower(c.Format) == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// Discard is a logger that writes nothing, for tests and embedded parts.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}
