# A freeze-free (uffd-wp) chain handed to CRIU: criu dump refuses the process until `predump untrack`, then a full dump restores.
# needs: uffd-wp criu
# timeout: 400
#
# What the user sees: every uffd-wp pre-dump says on stderr that criu dump refuses
# a process holding predump's userfaultfd and what to run; criu dump fails with
# "Can't dump file … anon_inode:[userfaultfd]"; after `predump untrack` the
# process holds nothing of predump's and CRIU dumps it whole (its --track-mem is
# soft-dirty: a uffd-wp chain cannot be its parent).

run() {
  workload_start --size 32M --threads 1
  step "predump pre-dump --pre-dump-mode freeze-free (uffd-wp)"
  predump pre-dump -t "$WL_PID" -D 1 --pre-dump-mode freeze-free --json >1.json 2>1.err
  cat 1.err
  expect_eq "$(json 1.json .trackBackend)" uffd-wp "tracking"
  expect_match "$(cat 1.err)" "'criu dump' refuses .*predump untrack -t $WL_PID" "the handover note"
  wl dirty-range 0 256 >/dev/null
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --pre-dump-mode freeze-free --json >2.json 2>2.err
  expect_eq "$(json 2.json .stoppedWindowMs)" 0 "stopped (ms) in the second freeze-free pre-dump"
  expect_eq "$(json 2.json .trackNote)" null "the chain"

  step "criu dump without untrack: refused, as the note said"
  criu_fails dump -t "$WL_PID" -D 3 --leave-running
  local why
  why=$(grep -E "Can't dump file .*userfaultfd" 3/dump.log | head -1)
  [ -n "$why" ] || fail "criu dump failed for another reason than the userfaultfd: $(grep Error 3/dump.log | head -3)"
  note "criu dump before untrack: $why"
  # criu left the process running and unfrozen.
  wl_check

  step "predump untrack, then a full criu dump"
  predump untrack -t "$WL_PID"
  if ls -l "/proc/$WL_PID/fd" | grep -qE 'userfaultfd|predump-uffd'; then
    fail "predump's fds are still in the process after untrack"
  fi
  rm -rf 3
  criu_do dump -t "$WL_PID" -D 3
  read -r w3 p3 < <(criu_stats 3)
  note "full criu dump after untrack: $w3 pages written"
  step "criu restore"
  criu_do restore -D 3 -d
  wl_check
}
