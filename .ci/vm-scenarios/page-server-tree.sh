# A process tree migrated through criu's page server: two predump tree pre-dumps stream every process's pages and the shared memory objects to `criu page-server` (Debian's CRIU 3.17, or PREDUMP_VM_CRIU's, with its header layout), criu dump continues the chain onto it, criu restore brings the whole tree back from the server's directory.
# needs: soft-dirty criu pagemap-scan
#   (6.12 only: what it proves does not depend on the kernel, and CI's time is counted)
# timeout: 600
#
# Issues 12 and 14 together. The workload as a tree of 4 processes (a grandchild
# among them), each with private data, all sharing a MAP_SHARED|MAP_ANONYMOUS region
# and a shared /dev/zero mapping. The destination's directories ps1, ps2 (parent
# ../ps1), ps3 (parent ../ps2) are written by Debian's criu page-server alone, one
# connection each carrying every pagemap of the tree (pagemap-PID.img per process,
# pagemap-shmem-SHMID.img per shared object); the source's local1..3 keep what each
# client keeps locally. predump tracks with soft-dirty, so its second pre-dump sends
# only what each process wrote (and the shared objects whole), and criu dump
# --track-mem after it only what changed since. CRIU takes shared anonymous memory
# whole in its final dump (docs/CRIU-ROUND-TRIP.md): private pages may come from the
# chain on the server, shared ones from the dump. Proof: each restored process's own
# check (its data and both shared regions, page by page against the pattern).

run() {
  local k answer pids
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  pids=$(wl tree | jq -r '[.processes[].pid] | sort | join(" ")')

  step "predump tree pre-dump 1 → criu page-server"
  cps_start ps1
  predump pre-dump -t "$WL_PID" -D local1 --track-mem soft-dirty --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >1.json ||
    fail "predump's tree pre-dump to criu page-server failed"
  cps_wait ps1
  expect_eq "$(jq -r '[.processes[].pid] | sort | join(" ")' 1.json)" "$pids" "processes pre-dumped"
  for k in $pids; do
    [ -f "ps1/pagemap-$k.img" ] || fail "criu page-server has no pagemap of process $k: $(ls ps1)"
  done
  for k in $(jq -r '.sharedMemory[].shmid' 1.json); do
    [ -f "ps1/pagemap-shmem-$k.img" ] || fail "criu page-server has no pagemap of shared object $k"
  done
  note "tree pre-dump 1 → criu page-server: $(json 1.json .pagesWritten) pages, $(jq '.processes | length' 1.json) processes, $(jq '.sharedMemory | length' 1.json) shared objects, $(ls ps1/pagemap-*.img | wc -l) pagemaps stored"

  wl shared-dirty shared 100 7 >/dev/null
  wl proc 1 dirty 100 3 >/dev/null

  step "predump tree pre-dump 2 → criu page-server, on top of the first"
  cps_start ps2 --prev-images-dir ../ps1
  predump pre-dump -t "$WL_PID" -D local2 --prev-images-dir ../local1 --track-mem soft-dirty --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >2.json ||
    fail "predump's second tree pre-dump to criu page-server failed"
  cps_wait ps2
  expect_eq "$(json 2.json .pageServer.hasParent)" true "criu's server says its parent holds the root's pagemap"
  # Each process's 4 MiB of private data is in the first; the second takes what was written.
  [ "$(json 2.json .pagesSkippedParent)" -gt 2048 ] ||
    fail "pre-dump 2 left only $(json 2.json .pagesSkippedParent) pages to the server's parent"
  note "tree pre-dump 2 → criu page-server: $(json 2.json .pagesWritten) pages sent, $(json 2.json .pagesSkippedParent) left to ps1"

  wl shared-dirty devzero 100 9 >/dev/null
  wl proc 2 dirty 50 5 >/dev/null

  step "criu dump of the tree → criu page-server, on predump's chain"
  cps_start ps3 --prev-images-dir ../ps2
  criu_do dump -t "$WL_PID" -D local3 --track-mem --prev-images-dir ../local2 \
    --page-server --address 127.0.0.1 --port "$CPS_PORT"
  cps_wait ps3
  read -r w p < <(criu_stats local3)
  note "criu dump → criu page-server: $w pages written, $p from the parent"

  step "criu restore of the tree from the server's directory"
  find local3 -maxdepth 1 -type f -exec cp {} ps3/ \;
  criu_do restore -D ps3 -d
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after restore: $answer"
  done
  wl_check
}
