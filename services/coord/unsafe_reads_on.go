//go:build berth_unsafe_local_reads

package coord

// forceLocalReads is true in this build: linearizable reads are served from local state
// without a ReadIndex barrier. NEVER ship this build; it exists to test checkers.
const forceLocalReads = true
