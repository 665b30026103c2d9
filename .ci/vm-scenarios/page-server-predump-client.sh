# A migration rehearsal onto criu's page server: predump pre-dumps (read, then splice) stream their pages to `criu page-server` (Debian's CRIU 3.17, or PREDUMP_VM_CRIU's: --page-server-format $CRIU_FORMAT), criu dump continues the chain onto it, criu restore brings the process back from the server's directories.
# needs: soft-dirty criu pagemap-scan
#   (6.12 only: what it proves does not depend on the kernel, and CI's time is counted)
# timeout: 600
#
# The destination's directories ps1, ps2 (parent ../ps1), ps3 (parent ../ps2)
# are written by Debian's criu page-server alone; the source's local1..3 keep
# what each client keeps locally. predump tracks with soft-dirty (what criu
# dump --track-mem reads after it), so the dump sends only what changed since
# predump's second pre-dump. The dump's own images are copied next to its
# pages and criu restore runs there: the workload checks its whole memory.

run() {
  local j
  workload_start --size 8M --threads 1

  step "predump pre-dump (read) → criu page-server"
  cps_start ps1
  predump pre-dump -t "$WL_PID" -D local1 --pre-dump-mode read --track-mem soft-dirty --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >p1.json ||
    fail "predump pre-dump to criu page-server failed"
  cps_wait ps1
  expect_eq "$(json p1.json .trackBackend)" soft-dirty "predump's tracking (criu dump reads it)"
  note "predump pre-dump → criu page-server: $(json p1.json .pagesWritten) pages sent"

  wl dirty-range 0 512 >/dev/null

  step "predump pre-dump (splice) → criu page-server, on top of the first"
  cps_start ps2 --prev-images-dir ../ps1
  predump pre-dump -t "$WL_PID" -D local2 --prev-images-dir ../local1 --pre-dump-mode splice \
    --track-mem soft-dirty --json \
    --page-server --address 127.0.0.1 --port "$CPS_PORT" --page-server-format "$CRIU_FORMAT" >p2.json ||
    fail "the second predump pre-dump to criu page-server failed"
  cps_wait ps2
  j=p2.json
  note "predump pre-dump (splice) → criu page-server: $(json $j .pagesWritten) pages sent, $(json $j .pagesSkippedParent) left to ps1"
  expect_eq "$(json $j .pageServer.hasParent)" true "criu's server says its parent holds the pagemap"
  expect_between "$(json $j .pagesWritten)" 512 4000 "pages the second pre-dump sent"
  [ "$(json $j .pagesSkippedParent)" -gt 0 ] || fail "nothing was left to the parent"

  wl dirty-range 1024 256 >/dev/null

  step "criu dump → criu page-server, on top of predump's pre-dumps"
  cps_start ps3 --prev-images-dir ../ps2
  criu_do dump -t "$WL_PID" -D local3 --track-mem --prev-images-dir ../local2 \
    --page-server --address 127.0.0.1 --port "$CPS_PORT"
  cps_wait ps3
  read -r w p < <(criu_stats local3)
  note "criu dump → criu page-server: $w pages written, $p from the parent"
  expect_between "$w" 256 4000 "pages criu dump sent (only what changed since predump's pre-dump)"

  step "criu restore from the server's directory"
  find local3 -maxdepth 1 -type f -exec cp {} ps3/ \;
  criu_do restore -D ps3 -d
  wl_check
}
