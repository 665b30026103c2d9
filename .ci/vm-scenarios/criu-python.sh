# A program nobody here wrote (Debian's python3): predump → predump → criu dump --track-mem → criu restore.
# needs: soft-dirty criu pagemap-scan
#   (6.12 only: what it proves does not depend on the kernel, and CI's time is counted)
# timeout: 500
#
# The workload is ours; this is the interpreter of Debian's python3.11, with its
# heap of objects, its dozens of shared libraries (private file mappings whose
# unwritten pages neither tool copies) and a 32 MiB buffer of seeded random
# bytes. It checks its buffer and its 60,000 objects itself on request (made
# again from the seed and the commands it ran); commands come through FIFOs
# opened for one exchange each (as the
# workload's: no pipe held across the checkpoint). Proof as in criu-after-predump:
# criu dump on predump's chain succeeds and takes the bulk from it, the restored
# process equals the chain page by page and passes its own check.

# The program, written where the scenario runs (the checkout is read-only here).
_python_prog() {
  cat >"$1" <<'EOF'
import json, os, random, sys

ctl, mib = sys.argv[1], int(sys.argv[2])
PAGE = 4096
SEED = 20261204
N = 60000


def made(i):
    return [str(i) * 3, float(i) / 7, (i, -i)]


# What the process must hold is known from the seed and the commands: checking
# regenerates it. Between checks nothing walks the whole heap (reference counts
# are writes: a walk would dirty every object's page).
buf = bytearray(random.Random(SEED).randbytes(mib << 20))
objs = {i: made(i) for i in range(N)}
bumps = {}  # page -> how many times its first byte was incremented
changed = {}  # object -> its third item


def check():
    want = bytearray(random.Random(SEED).randbytes(mib << 20))
    for p, n in bumps.items():
        want[p * PAGE] = (want[p * PAGE] + n) & 255
    bad_pages = sum(1 for p in range(len(buf) // PAGE) if buf[p * PAGE : (p + 1) * PAGE] != want[p * PAGE : (p + 1) * PAGE])
    bad_objs = 0
    for i in range(N):
        o = made(i)
        if i in changed:
            o[2] = changed[i]
        bad_objs += objs[i] != o
    return {"ok": bad_pages == 0 and bad_objs == 0, "badPages": bad_pages, "badObjects": bad_objs}


def answer(reply):
    with open(os.path.join(ctl, "reply"), "w") as f:
        f.write(json.dumps(reply) + "\n")


answer({"pid": os.getpid(), "pages": len(buf) // PAGE})
while True:
    with open(os.path.join(ctl, "cmd")) as f:
        lines = f.read().split("\n")
    for line in filter(None, (l.strip() for l in lines)):
        words = line.split()
        if words[0] == "dirty":
            first, n = int(words[1]), int(words[2])
            for p in range(first, first + n):
                buf[p * PAGE] = (buf[p * PAGE] + 1) & 255
                bumps[p] = bumps.get(p, 0) + 1
            for i in range(first, first + n):
                objs[i % N][2] = changed[i % N] = (i, n)
            answer({"ok": True, "dirtied": n})
        elif words[0] == "check":
            answer(check())
        else:
            answer({"error": "unknown command " + words[0]})
EOF
}

run() {
  command -v python3 >/dev/null || skip "no python3 on this machine"
  WL=$PWD/py
  mkdir "$WL"
  mkfifo "$WL/cmd" "$WL/reply"
  _python_prog /tmp/predump-vm-prog.py
  # A session of its own, no terminal, as for the workload (vm-lib.sh).
  setsid python3 /tmp/predump-vm-prog.py "$WL" 32 </dev/null >"$WL/out" 2>&1 &
  WL_PID=$!
  disown "$WL_PID"
  _vm_pids+=("$WL_PID")
  local ready
  ready=$(timeout 120 head -n1 "$WL/reply") || fail "python did not start: $(cat "$WL/out")"
  expect_eq "$(jq -r .pid <<<"$ready")" "$WL_PID" "the python process's pid"
  echo "python $WL_PID ready: $ready"
  note "python3: $(grep -c '\.so' "/proc/$WL_PID/maps") mappings of shared libraries, $(awk '/^Rss/ {s += $2} END {print s}' "/proc/$WL_PID/smaps") KiB resident"

  step "predump pre-dump 1"
  predump pre-dump -t "$WL_PID" -D 1 --json >1.json
  expect_eq "$(json 1.json .trackBackend)" soft-dirty "track-mem auto's choice"
  wl dirty 0 256 >/dev/null
  step "predump pre-dump 2, on ../1"
  predump pre-dump -t "$WL_PID" -D 2 --prev-images-dir ../1 --json >2.json
  expect_eq "$(json 2.json .trackNote)" null "the parent is trusted"
  note "predump pre-dumps of python: $(json 1.json .pagesWritten) then $(json 2.json .pagesWritten) pages written ($(json 2.json .pagesSkippedParent) left to the parent)"
  expect_between "$(json 2.json .pagesSkippedParent)" 7000 1000000 "pages left to the parent (the 7,936 of the buffer not written, about)"

  wl dirty 4096 512 >/dev/null
  step "criu dump on ../2"
  criu_do dump -t "$WL_PID" -D 3 --track-mem --prev-images-dir ../2
  local written parent
  read -r written parent < <(criu_stats 3)
  note "criu dump on predump's chain of python: $written pages written, $parent from the parent"
  # The 512 pages of the buffer, the 512 objects changed with them (their lists
  # and tuples), and what the interpreter touched answering.
  expect_between "$written" 512 3000 "pages criu dump wrote"
  expect_between "$parent" 7000 1000000 "pages criu dump left to predump's chain (7,680 of the buffer, about)"

  step "criu restore, stopped"
  criu_do restore -D 3 -d --leave-stopped
  verify_restored 3
  kill -CONT "$WL_PID"
  local check
  check=$(wl check)
  echo "python's own check: $check"
  expect_eq "$(jq -r .ok <<<"$check")" true "python's own check of its buffer and objects"
  note "python's own check after the restore: $check"
}
