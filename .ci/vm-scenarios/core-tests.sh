# The core's tests (cargo test -p predump-core: unit tests and tests/*.rs) on this kernel.
# timeout: 900
#
# What the old kernel matrix proved, now on both kernels: the soft-dirty backend and
# the pagemap read (6.1), soft-dirty, uffd-wp async and PAGEMAP_SCAN together (6.12).
# PREDUMP_TEST_REQUIRE makes the tests of a backend this kernel has fail instead of
# skipping when its probe says no. One test at a time: the 2 emulated vCPUs are many
# times slower than the host's, and tests that measure time failed now and then
# when another test's busy threads shared them.
#
# Left out here, as they measure the emulator and the host's load rather than the
# kernel (each failed under TCG while the host's 2 CPUs ran at load 10-20), and what
# they check is ptrace's, the same on every kernel (npm test runs them on the host):
# - injected_call_latency: a speed yardstick for real hardware;
# - *nanosleep*: an 800 ms sleep interrupted after 200 ms must end within 990 ms
#   (1030-1415 ms here);
# - a_signal_delivery_stop_at_freeze_keeps_its_signal_and_siginfo: a race that
#   needs many quick freezes to be caught (717 in 90 s caught none);
# - a_computing_target_stays_correct_through_1000_injections: 100 s here;
# - receiving_512_mib_keeps_the_servers_memory_flat: the page server's own memory
#   bound, 50 s here for 512 MiB through a socket.
SKIP=(injected_call_latency nanosleep a_signal_delivery_stop_at_freeze_keeps_its_signal_and_siginfo
  a_computing_target_stays_correct_through_1000_injections receiving_512_mib_keeps_the_servers_memory_flat)

LIST=target/vm-prepare/core-tests.list

prepare() {
  mkdir -p target/vm-prepare
  cargo test --release -p predump-core -j 2 --no-run --message-format=json-render-diagnostics >target/vm-prepare/cargo.json
  # The test binaries (profile.test); the testee they run is found at its host path.
  grep '"reason":"compiler-artifact"' target/vm-prepare/cargo.json | grep '"test":true' |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | sort >"$LIST"
  [ -s "$LIST" ] || { echo "cargo built no test binary" >&2; return 1; }
}

run() {
  local require=() f
  for f in $VM_FEATURES; do
    case $f in soft-dirty | uffd-wp) require+=("$f") ;; esac
  done
  local IFS=,
  # The injection kill test: 40 kills here (200 on the host, in npm test): each
  # trial starts two processes, seconds under TCG.
  export PREDUMP_TEST_REQUIRE="${require[*]}" RUST_BACKTRACE=1 PREDUMP_KILL_TRIALS=40
  unset IFS
  echo "PREDUMP_TEST_REQUIRE=$PREDUMP_TEST_REQUIRE"
  local failed=() t name rc
  while read -r t; do
    name=$(basename "$t")
    name=${name%-*}
    step "$name"
    set +e
    timeout -k 5 400 "$t" --test-threads=1 --show-output "${SKIP[@]/#/--skip=}" 2>&1 | tee "$name.out"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
    # Tests that skipped themselves say why on stderr ("…: test skipped").
    awk -v bin="$name" '/^---- .* stdout ----$/ {test = $2} /test skipped/ {print "NOTE: skipped " bin "::" test ": " $0}' "$name.out"
    grep -E '^test result:' "$name.out" | sed "s/^/NOTE: $name: /" | tail -1
  done <"$VM_REPO/$LIST"
  [ ${#failed[@]} = 0 ] || fail "failed: ${failed[*]}"
}
