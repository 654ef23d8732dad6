package coord

import "os"

func osWriteFile(name string, b []byte) error { return os.WriteFile(name, b, 0o600) }
