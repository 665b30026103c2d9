# hugetlb memory and criu 3.17: what CRIU does on top of pre-dumps (a CRIU limit, documented; not run by default).
# needs: soft-dirty criu
# timeout: 400
# default: no
#
# predump leaves hugetlb mappings out of pre-dumps, as CRIU does since 3.18 (its
# dump then copies them whole). Debian's criu 3.17 still dumps them in pre-dumps
# and writes holes for their pages in the dump: the kernel keeps no soft-dirty bit
# per hugetlb page (only the mapping's VM_SOFTDIRTY), so every page looks clean
# there. This records, on this kernel, (1) criu dump on top of a predump
# pre-dump, and (2) CRIU's own chain, with a huge page written between its
# pre-dump and its dump: is the restored page the new one?

mem_page() { dd if="/proc/$1/mem" bs=4096 skip=$(($2 / 4096)) count=1 status=none | sha256sum | cut -c1-16; }

run() {
  echo 8 >/proc/sys/vm/nr_hugepages
  workload_start --size 8M --threads 0
  local h
  h=$(wl hugetlb 2 5 | jq -r .addr)
  [ "$h" != null ] || skip "no huge pages here (vm.nr_hugepages)"
  grep -i huge "/proc/$WL_PID/maps"

  step "(1) predump pre-dump, then criu dump on it"
  predump pre-dump -t "$WL_PID" -D 1 --json >1.json
  mkdir -p 2
  if criu dump -t "$WL_PID" -D 2 --track-mem --prev-images-dir ../1 --leave-running -v4 -o dump.log; then
    note "criu 3.17 dump on a predump pre-dump of a hugetlb mapping: succeeded"
  else
    note "criu 3.17 dump on a predump pre-dump of a hugetlb mapping: failed: $(_criu_why 2/dump.log)"
  fi

  step "(2) CRIU's own chain, a huge page written in between"
  criu_do pre-dump -t "$WL_PID" -D c1
  wl write "$h" 1 77 >/dev/null
  local want
  want=$(mem_page "$WL_PID" "$h")
  criu_do dump -t "$WL_PID" -D c2 --track-mem --prev-images-dir ../c1
  read -r w p < <(criu_stats c2)
  criu_do restore -D c2 -d
  local got
  got=$(mem_page "$WL_PID" "$h")
  if [ "$got" = "$want" ]; then
    note "criu 3.17's own chain: the huge page written between pre-dump and dump restored right ($w written, $p from the parent)"
  else
    note "criu 3.17's own chain: the huge page written between pre-dump and dump restored STALE ($w written, $p from the parent)"
  fi
}
