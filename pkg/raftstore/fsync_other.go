//go:build !linux

package raftstore

import "os"

// fdatasync flushes the file to stable storage (fsync where fdatasync is not available).
func fdatasync(f *os.File) error { return f.Sync() }

// preallocate does nothing where fallocate is not available.
func preallocate(*os.File, int64) error { return nil }
