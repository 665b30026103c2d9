# A process tree migrated onto predump's page server: criu pre-dump -t and criu dump -t of a tree sharing memory stream every process's pagemap and the shared memory objects to `predump page-server` (CRIU 3.17: 24-byte headers, one connection each), criu restore brings the tree back from the server's directory.
# needs: soft-dirty criu pagemap-scan
# timeout: 600
# default: no
#
# The server side of issue 14 for trees: the workload as a tree of 4 processes (a
# grandchild among them), each with private data, all sharing a MAP_SHARED|MAP_ANONYMOUS
# region and a shared /dev/zero mapping. CRIU's pre-dump sends one pagemap per process
# (and whatever shared memory it pre-dumps) over one connection; its dump, on that
# pre-dump (--track-mem --prev-images-dir), leaves unchanged private pages to the
# server's parent. predump's server must store each pagemap under its own name and
# pages id, checking each hole against that process's pagemap in the parent. The
# dump's local images are copied next to its pages and criu restore runs there; each
# restored process checks its data and both shared regions. Only when named: 6.12 only
# (what it proves does not depend on the kernel), about a minute.

run() {
  local k answer pids stored w p
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  pids=$(wl tree | jq -r '[.processes[].pid] | sort | join(" ")')

  step "criu pre-dump -t of the tree → predump page-server"
  ps_start ps1
  criu_do pre-dump -t "$WL_PID" -D local1 --page-server --address 127.0.0.1 --port "$PS_PORT"
  ps_wait ps1
  stored=$(jq -r '[.pagemaps[] | select(.kind == "process") | .id] | sort | join(" ")' ps1.result.json)
  expect_eq "$stored" "$pids" "the processes whose pagemaps predump's server stored"
  note "criu pre-dump → predump page-server: $(jq '[.pagemaps[].pagesPresent] | add' ps1.result.json) pages in $(jq '.pagemaps | length' ps1.result.json) pagemaps ($(jq '[.pagemaps[] | select(.kind == "shmem")] | length' ps1.result.json) of shared memory)"

  wl shared-dirty shared 100 7 >/dev/null
  wl proc 1 dirty 100 3 >/dev/null

  step "criu dump -t of the tree → predump page-server, on the pre-dump"
  ps_start ps2 --prev-images-dir ../ps1
  criu_do dump -t "$WL_PID" -D local2 --track-mem --prev-images-dir ../local1 \
    --page-server --address 127.0.0.1 --port "$PS_PORT"
  ps_wait ps2
  read -r w p < <(criu_stats local2)
  note "criu dump → predump page-server: $w pages written, $p left to the server's parent; stored: $(jq -c '[.pagemaps[] | {kind, id, pagesPresent, pagesParent}]' ps2.result.json)"
  [ "$(jq '[.pagemaps[].pagesParent] | add' ps2.result.json)" -gt 0 ] ||
    fail "the dump left nothing to the server's parent"

  step "criu restore of the tree from predump's server's directory"
  find local2 -maxdepth 1 -type f -exec cp {} ps2/ \;
  criu_do restore -D ps2 -d
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after restore: $answer"
  done
  wl_check
}
