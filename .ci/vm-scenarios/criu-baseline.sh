# CRIU alone: criu pre-dump → criu dump → criu restore of the workload (the yardstick for the mixed chains).
# needs: soft-dirty criu
# timeout: 300
# default: no
#
# Not a test of predump: the yardstick its figures are compared with (README,
# "Using predump with CRIU"), and a quick way to see that criu works in the VM.
# Run it by name: .ci/vm criu-baseline

run() {
  step "criu check"
  criu check || fail "criu check failed on this kernel"
  workload_start --size 32M --threads 1
  step "criu pre-dump"
  criu_do pre-dump -t "$WL_PID" -D 1
  read -r w p < <(criu_stats 1)
  note "criu pre-dump: $w pages written"
  # 512 pages written between the pre-dump and the dump.
  wl dirty-range 0 512 >/dev/null
  step "criu dump"
  criu_do dump -t "$WL_PID" -D 2 --track-mem --prev-images-dir ../1
  read -r w p < <(criu_stats 2)
  note "criu dump on criu pre-dump: $w pages written, $p from the parent"
  expect_between "$w" 512 2000 "pages criu dump wrote"
  step "criu restore"
  criu_do restore -D 2 -d
  wl_check
}
