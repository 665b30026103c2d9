# The end-to-end soft-dirty tests (ava: __test__/tracking.test.ts, read mode with soft-dirty) through the CLI and API.
# needs: soft-dirty !uffd-wp
#   (6.1 only: where auto takes soft-dirty and nothing else tracks; on 6.12 the core's
#   tests cover soft-dirty through PAGEMAP_SCAN, and CI's 90 minutes do not fit both)
# timeout: 1500
#   (6 tests: ~11 min under TCG on a host at load 15, the 10-pre-dump test 4 of them)
#
# The host has no soft-dirty, so these only run here: pre-dump chains while the
# target writes, maps, unmaps, mprotects, zaps, starts threads and forks, closed by
# `predump dump --leave-stopped`, the chain compared with /proc/PID/mem.

run() {
  cd "$VM_REPO"
  # One test at a time: the emulated CPUs are slow enough already.
  "$VM_NODE" node_modules/ava/entrypoints/cli.mjs --serial --concurrency 1 --timeout 10m \
    --match '*soft-dirty*' __test__/tracking.test.ts 2>&1 | tee "$OLDPWD/ava.out"
  local rc=${PIPESTATUS[0]}
  grep -E '^\s+✔|^\s+✘|passed|failed' "$OLDPWD/ava.out" | sed 's/^ */NOTE: /' | tail -12
  [ "$rc" = 0 ] || fail "ava failed (exit $rc)"
  grep -q 'soft-dirty' "$OLDPWD/ava.out" || fail "no soft-dirty test ran"
}
