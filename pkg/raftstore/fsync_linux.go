package raftstore

import (
	"errors"
	"os"
	"syscall"
)

// fdatasync flushes the file's data, and only the metadata needed to read it back, to
// stable storage.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	return serr
}

// preallocate reserves size bytes for f (fallocate: the file's size becomes size, the new
// space reads as zeros), so that appends within it change no file size and fdatasync need
// not write that metadata every time. File systems without fallocate are left alone.
func preallocate(f *os.File, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fallocate(int(fd), 0, 0, size) }); err != nil {
		return err
	}
	if errors.Is(serr, syscall.EOPNOTSUPP) || errors.Is(serr, syscall.ENOSYS) {
		return nil
	}
	return serr
}
