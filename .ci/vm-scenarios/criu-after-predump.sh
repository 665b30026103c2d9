# predump → predump → criu dump --track-mem --prev-images-dir ../2 → criu restore: the memory is whole.
# needs: soft-dirty criu
# timeout: 400
#
# The user's workflow on a soft-dirty kernel (README, "Using predump with CRIU"),
# in read mode, with `--track-mem auto` (which must take soft-dirty, CRIU's
# tracking, also where uffd-wp exists: 6.12), relative --prev-images-dir as CRIU
# has them. The target holds what CRIU treats apart (criu/mem.c): the vDSO, whose
# untouched pages CRIU asks the parent for; private file mappings (libc, the
# binary), whose unwritten pages neither tool copies; an AIO ring (left out of
# pre-dumps, copied whole by the dump); an unreadable mapping holding data (not in
# a read pre-dump: CRIU's dump copies it whole); transparent huge pages (Debian's
# kernels default to THP always: the data region is made of them).
# Proof: criu dump succeeds and takes pages from predump's chain (its stats), the
# restored process's memory equals the chain page by page (predump verify, while
# it is stopped) and passes its own check.

run() {
  workload_start --size 32M --threads 1
  local nr a
  a=$(wl map 64 11 | jq -r .addr)
  wl protect "$a" 16 none >/dev/null # 16 pages of data, unreadable
  wl aio >/dev/null
  grep -E 'vdso|aio|---p' "/proc/$WL_PID/maps" || true

  step "predump pre-dump 1"
  predump pre-dump -t "$WL_PID" -D 1 --json >1.json
  expect_eq "$(json 1.json .trackBackend)" soft-dirty "track-mem auto's choice"
  wl dirty-range 0 256 >/dev/null
  step "predump pre-dump 2, on ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --json >2.json
  expect_eq "$(json 2.json .trackNote)" null "the parent is trusted"
  note "predump pre-dumps: $(json 1.json .pagesWritten) then $(json 2.json .pagesWritten) pages written ($(json 2.json .pagesSkippedParent) left to the parent)"

  # 512 pages (2 MiB, one huge page when aligned) written after the last pre-dump.
  wl dirty-range 2048 512 >/dev/null
  step "criu dump on ../2"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2
  read -r written parent < <(criu_stats 3)
  note "criu dump on predump's chain: $written pages written, $parent from the parent"
  # What CRIU wrote is what changed since predump's last pre-dump: the 512 pages
  # (1024 when they straddle two huge pages), plus what the workload's threads and
  # the freeze itself touched; the rest comes from predump's chain.
  expect_between "$written" 512 2048 "pages criu dump wrote"
  # The two bounds agree: of the ~8,300 pages, as many as 2,048 written leaves ~6,250 to
  # the chain (a slow emulated run once let the workload write 1,566: 6,788 left).
  expect_between "$parent" 6000 100000 "pages criu dump left to predump's chain"

  step "criu restore, stopped"
  criu_do restore -D 3 -d --leave-stopped
  step "predump verify of the restored process against the chain 3 → 2 → 1"
  verify_restored 3
  kill -CONT "$WL_PID"
  wl_check
}
