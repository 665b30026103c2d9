# predump splice pre-dump → criu pre-dump → criu dump → criu restore, with unreadable memory holding data.
# needs: soft-dirty criu
# timeout: 400
#
# CRIU's splice pre-dump copies unreadable mappings and, on top of a parent whose
# inventory says "splice", asks the parent for their clean pages; predump never
# copies them, so its splice images that left such pages out say "read" (CRIU
# then copies them itself). Here 16 pages of data are made unreadable before the
# first pre-dump.

run() {
  workload_start --size 32M --threads 1
  local a
  a=$(wl map 64 21 | jq -r .addr)
  wl protect "$a" 16 none >/dev/null
  step "predump pre-dump --pre-dump-mode splice"
  predump pre-dump -t "$WL_PID" -D 1 --pre-dump-mode splice --json >1.json
  expect_eq "$(json 1.json .mode)" splice "mode"
  expect_eq "$(crit decode -i 1/inventory.img | jq .entries[0].pre_dump_mode)" 2 "pre_dump_mode (2: read) of splice images missing unreadable pages"
  wl dirty-range 0 256 >/dev/null
  step "criu pre-dump on ../1"
  criu_do pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1
  read -r w2 p2 < <(criu_stats 2)
  note "criu pre-dump on predump's splice pre-dump: $w2 written, $p2 from the parent"
  wl dirty-range 2048 512 >/dev/null
  step "criu dump on ../2"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2
  read -r w3 p3 < <(criu_stats 3)
  note "criu dump on it: $w3 written, $p3 from the parent"
  step "criu restore"
  criu_do restore -D 3 -d --leave-stopped
  verify_restored 3
  kill -CONT "$WL_PID"
  wl_check
}
