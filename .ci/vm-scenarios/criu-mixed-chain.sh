# criu pre-dump → predump pre-dump → criu dump → criu restore: predump continues CRIU's chain, CRIU predump's.
# needs: soft-dirty criu
# timeout: 400
#
# predump trusts a CRIU pre-dump as its parent when CRIU's clear of the soft-dirty
# bits is the last one (CRIU's dump_uptime is later than predump's last recorded
# clear; here there is none), so it copies only what changed. Once predump has
# cleared after it, the same CRIU pre-dump is stale: predump copies every page and
# says why. criu dump continues predump's images; after the restore (same pid, a
# new process) the old images are refused as a parent (pid reuse).

run() {
  workload_start --size 32M --threads 1
  step "criu pre-dump"
  criu_do pre-dump -t "$WL_PID" -D 1
  read -r w1 _ < <(criu_stats 1)
  wl dirty-range 0 256 >/dev/null
  step "predump pre-dump on criu's ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --json >2.json
  expect_eq "$(json 2.json .trackBackend)" soft-dirty "tracking"
  expect_eq "$(json 2.json .trackNote)" null "CRIU's pre-dump is trusted as the parent"
  local w2 p2
  w2=$(json 2.json .pagesWritten)
  p2=$(json 2.json .pagesSkippedParent)
  note "criu pre-dump: $w1 pages; predump on it: $w2 written, $p2 left to criu's images"
  expect_between "$p2" 6000 100000 "pages predump left to CRIU's pre-dump"
  expect_between "$w2" 256 2000 "pages predump copied"

  step "predump pre-dump on criu's ../1 again: stale now"
  predump pre-dump -t "$WL_PID" -D 2b --prev-images-dir ../1 --json >2b.json
  expect_match "$(json 2b.json .trackNote)" "cleared the target's soft-dirty bits after the parent was made" "the stale parent's note"
  expect_eq "$(json 2b.json .pagesSkippedParent)" 0 "pages left to a stale parent"

  wl dirty-range 2048 512 >/dev/null
  step "criu dump on predump's ../2b"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2b
  read -r w3 p3 < <(criu_stats 3)
  note "criu dump on it: $w3 pages written, $p3 from the chain"
  expect_between "$w3" 512 2048 "pages criu dump wrote"
  step "criu restore"
  criu_do restore -D 3 -d --leave-stopped
  verify_restored 3
  kill -CONT "$WL_PID"
  wl_check

  step "the pre-restore images as the parent of the restored process"
  if predump pre-dump -t "$WL_PID" -D 4 --prev-images-dir ../3 --json >4.json 2>4.err; then
    fail "images of the process before its restore were taken as a parent"
  fi
  cat 4.err
  expect_eq "$(json 4.json .error.code)" EPARENT "error code"
  expect_match "$(json 4.json .error.message)" "earlier process with pid $WL_PID .*the pid was reused" "message"
}
