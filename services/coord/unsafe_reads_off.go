//go:build !berth_unsafe_local_reads

package coord

// forceLocalReads is true only in builds with the berth_unsafe_local_reads tag, which serve
// linearizable reads from local state to prove that a linearizability checker bites.
const forceLocalReads = false
