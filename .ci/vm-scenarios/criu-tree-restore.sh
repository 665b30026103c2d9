# A process tree sharing memory: predump → predump (soft-dirty tracked) → criu dump --track-mem --prev-images-dir ../2 → criu restore: every process's memory whole.
# needs: soft-dirty criu
# timeout: 400
#
# Issue 12's round trip of a tree. The workload as a tree of 4 processes (a
# grandchild among them), each with private data, all sharing a
# MAP_SHARED|MAP_ANONYMOUS region and a shared /dev/zero mapping; two read-mode
# pre-dumps of the tree by predump with soft-dirty tracking (CRIU's own: nothing
# is left in the processes, where uffd-wp leaves a userfaultfd criu dump
# refuses), the second copying only what each process wrote since the first,
# writes in between to private and shared memory, then CRIU's final dump on
# predump's chain (continuing the soft-dirty tracking) and CRIU's restore. CRIU takes shared anonymous memory
# for memfd and writes it whole in its final dump (docs/CRIU-ROUND-TRIP.md), so
# the shared pages come from the dump, not the chain; the private pages may come
# from either. Proof: each restored process's own check (its data and both shared
# regions, page by page against the pattern it wrote).

run() {
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  wl tree | jq -c '[.processes[] | {index, pid, parent}]'
  step "predump pre-dump 1 of the tree"
  predump pre-dump -t "$WL_PID" -D 1 --track-mem soft-dirty --pre-dump-mode read --json >1.json ||
    fail "predump pre-dump 1 of the tree failed"
  wl shared-dirty shared 100 7 >/dev/null
  wl proc 1 dirty 100 3 >/dev/null
  step "predump pre-dump 2 of the tree, on ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --track-mem soft-dirty --pre-dump-mode read \
    --json >2.json || fail "predump pre-dump 2 of the tree failed"
  note "predump pre-dumps: $(json 1.json .pagesWritten) then $(json 2.json .pagesWritten) pages ($(json 2.json .pagesSkippedParent) left to the parent), $(jq '.processes | length' 2.json) processes, $(jq '.sharedMemory | length' 2.json) shared objects"
  [ "$(json 2.json .trackBackend)" = soft-dirty ] ||
    fail "pre-dump 2 did not track with soft-dirty: $(json 2.json .trackBackend)"
  note "pre-dump 2's note: $(json 2.json .trackNote)"
  # Each process's 4 MiB of private data is in the first; the second takes only what
  # was written since (10% of process 1's data, stacks; the shared objects whole).
  [ "$(json 2.json .pagesSkippedParent)" -gt 2048 ] ||
    fail "pre-dump 2 left only $(json 2.json .pagesSkippedParent) pages to its parent: the tracking did not work"
  wl shared-dirty devzero 100 9 >/dev/null
  wl proc 2 dirty 50 5 >/dev/null
  step "criu dump of the tree on ../2"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2
  read -r written parent < <(criu_stats 3)
  note "criu dump on predump's chain: $written pages written, $parent from the parent"
  step "criu restore of the tree"
  criu_do restore -D 3 -d
  local k answer
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    echo "process $k check: $answer"
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after restore: $answer"
  done
  wl_check
}
