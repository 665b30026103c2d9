# A process tree's chain closed by predump's own dump, with soft-dirty tracking: predump → predump → predump dump --track-mem soft-dirty --leave-stopped → verify: only what each process wrote is copied, 0 mismatches.
# needs: soft-dirty
# timeout: 300
#
# The host has no soft-dirty, so a tree's dump reading soft-dirty tracking runs only
# here (tree.test.ts covers uffd-wp on the host). The workload as a tree of 4
# processes sharing two objects; two read-mode pre-dumps tracked with soft-dirty,
# writes in between and before the dump, then `predump dump` on the chain: while the
# tree is frozen each process's soft-dirty pages are taken and only those (and what
# its parent lacks) copied, the rest left to the parent (PE_PARENT); verify compares
# the whole chain with the stopped tree's memory; the tree resumes and checks itself.
#
# First, the freeze-free mode on the tree: refused where the kernel has no uffd-wp (6.1:
# message, exit status, nothing written); where it has (6.12), two freeze-free pre-dumps of
# the tree, the second stopping no process, then `untrack -t` before the soft-dirty chain.

run() {
  workload_start --size 4M --threads 1 --tree 4 --shared 1M --devzero 512K
  local pids
  pids=$(wl tree | jq -r '[.processes[].pid] | join(" ")')
  if [ "$(predump check --json | jq -r .modes.freezeFree)" = true ]; then
    step "predump pre-dump --pre-dump-mode freeze-free of the tree, twice"
    predump pre-dump -t "$WL_PID" -D ff1 --pre-dump-mode freeze-free --json >ff1.json ||
      fail "freeze-free pre-dump 1 of the tree failed"
    wl proc 1 dirty 100 9 >/dev/null
    predump pre-dump -t "$WL_PID" -D ff2 --prev-images-dir ../ff1 --pre-dump-mode freeze-free \
      --json >ff2.json || fail "freeze-free pre-dump 2 of the tree failed"
    expect_eq "$(json ff2.json .mode)" freeze-free "the second pre-dump's mode"
    expect_eq "$(json ff2.json .stoppedWindowMs)" 0 "stopped (ms) in the second freeze-free pre-dump"
    note "freeze-free: first stopped $(json ff1.json .stoppedWindowMs) ms at most per process, second 0; $(json ff2.json .pagesWritten) pages written, $(json ff2.json .pagesSkippedParent) left to the parent"
    predump untrack -t "$WL_PID" >/dev/null || fail "untrack -t after the freeze-free pre-dumps failed"
  else
    step "predump pre-dump --pre-dump-mode freeze-free of the tree: refused (no uffd-wp here)"
    local rc=0
    predump pre-dump -t "$WL_PID" -D ff1 --pre-dump-mode freeze-free >ff.out 2>ff.err || rc=$?
    expect_eq "$rc" 1 "the refused freeze-free pre-dump's exit status"
    grep -q "the freeze-free mode needs uffd-wp dirty tracking" ff.err ||
      fail "the refusal does not say why: $(cat ff.err)"
    [ ! -e ff1 ] || fail "the refused freeze-free pre-dump left ff1 behind"
    note "refused: $(cat ff.err)"
  fi
  step "predump pre-dump 1 of the tree (soft-dirty)"
  predump pre-dump -t "$WL_PID" -D 1 --track-mem soft-dirty --pre-dump-mode read --json >1.json ||
    fail "predump pre-dump 1 of the tree failed"
  wl proc 1 dirty 100 3 >/dev/null
  step "predump pre-dump 2 of the tree, on ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --track-mem soft-dirty --pre-dump-mode read \
    --json >2.json || fail "predump pre-dump 2 of the tree failed"
  wl proc 2 dirty 50 5 >/dev/null
  wl shared-dirty shared 100 7 >/dev/null
  step "predump dump of the tree on ../2, left stopped"
  predump dump -t "$WL_PID" -D 3 --prev-images-dir ../2 --track-mem soft-dirty --leave-stopped \
    --json >3.json || fail "predump dump of the tree failed"
  note "pre-dumps $(json 1.json .pagesWritten), $(json 2.json .pagesWritten); dump $(json 3.json .pagesWritten) pages written, $(json 3.json .pagesSkippedParent) left to the parent; note: $(json 3.json .trackNote)"
  expect_eq "$(json 3.json .trackBackend)" soft-dirty "the dump's tracking"
  # Each process's 4 MiB of private data is in the chain: the dump takes only what was
  # written since pre-dump 2 (5% of process 2's data, stacks; the shared objects whole).
  [ "$(json 3.json .pagesSkippedParent)" -gt 3072 ] ||
    fail "the dump left only $(json 3.json .pagesSkippedParent) pages to its parent: the tracking was not read"
  step "predump verify of the chain against the stopped tree"
  predump verify -t "$WL_PID" -D 3 --json >v.json || fail "verify: $(cat v.json)"
  expect_eq "$(json v.json .mismatches)" 0 "verify's mismatches"
  note "verify: $(json v.json .pagesCompared) pages compared, $(json v.json .mismatches) mismatches"
  # shellcheck disable=SC2086 # a list of pids
  kill -CONT $pids
  local k answer
  for k in 1 2 3; do
    answer=$(wl proc "$k" check)
    [ "$(jq -r .ok <<<"$answer")" = true ] || fail "process $k's own check failed after the dump: $answer"
  done
  wl_check
}
