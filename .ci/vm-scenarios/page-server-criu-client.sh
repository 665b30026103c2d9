# A migration rehearsal onto predump's page server: criu pre-dump twice (the second over TLS, GnuTLS against rustls) and criu dump stream their pages to `predump page-server` (CRIU 3.17: 24-byte headers), criu restore brings the process back from the server's directories.
# needs: soft-dirty criu pagemap-scan
#   (6.12 only: what it proves does not depend on the kernel, and CI's time is counted)
# timeout: 900
#
# The destination's directories are ps1, ps2 (parent ../ps1) and ps3 (parent
# ../ps2); the source's local directories local1..3 keep what CRIU keeps
# locally (inventory, stats, and for the dump the process's other images). As in
# a real migration, the dump's local images (core, mm, fds, …) are then copied
# next to its pages, and criu restore runs there: every page of the restored
# process came through predump's server, and the workload checks its whole
# memory after the restore.
#
# Debian's criu is built with GnuTLS (libgnutls30): the second pre-dump runs
# with --tls on both ends, certificates made by certtool as a CRIU user makes
# them (one CA, one certificate for both ends naming 127.0.0.1), names checked.

# pki: a CA and one certificate naming 127.0.0.1, usable by both ends.
pki() {
  mkdir pki
  (
    cd pki
    certtool --generate-privkey --outfile ca.key 2>/dev/null
    printf 'cn = "predump vm CA"\nca\ncert_signing_key\nexpiration_days = 2\n' >ca.tmpl
    certtool --generate-self-signed --load-privkey ca.key --template ca.tmpl --outfile ca.pem 2>/dev/null
    certtool --generate-privkey --outfile key.pem 2>/dev/null
    printf 'cn = "127.0.0.1"\nip_address = "127.0.0.1"\ntls_www_server\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 2\n' >cert.tmpl
    certtool --generate-certificate --load-privkey key.pem --load-ca-certificate ca.pem \
      --load-ca-privkey ca.key --template cert.tmpl --outfile cert.pem 2>/dev/null
  ) || fail "certtool could not make the certificates"
  TLS=(--tls --tls-cacert "$PWD/pki/ca.pem" --tls-cert "$PWD/pki/cert.pem" --tls-key "$PWD/pki/key.pem")
}

run() {
  local present parent w p
  # Small: under TCG every step costs seconds (criu's first run ~20 s, a Node
  # start 5-10 s); the restore checks every page whatever the size.
  workload_start --size 8M --threads 1

  step "criu pre-dump → predump page-server"
  ps_start ps1
  criu_do pre-dump -t "$WL_PID" -D local1 --page-server --address 127.0.0.1 --port "$PS_PORT"
  ps_wait ps1
  present=$(json ps1.result.json '.pagemaps[0].pagesPresent')
  note "criu pre-dump → predump page-server: $present pages stored"
  expect_between "$present" 2048 8000 "pages the first pre-dump sent (8 MiB of data and the rest)"
  [ ! -e "local1/pagemap-$WL_PID.img" ] || fail "criu kept a pagemap locally: the pages did not go to the server"

  # 512 pages written between the pre-dumps.
  wl dirty-range 0 512 >/dev/null

  step "criu pre-dump --tls → predump page-server --tls, on top of the first"
  pki
  ps_start ps2 --prev-images-dir ../ps1 "${TLS[@]}"
  criu_do pre-dump -t "$WL_PID" -D local2 --prev-images-dir ../local1 \
    --page-server --address 127.0.0.1 --port "$PS_PORT" "${TLS[@]}"
  ps_wait ps2
  expect_eq "$(json ps2.result.json .tls)" true "the second session's TLS"
  present=$(json ps2.result.json '.pagemaps[0].pagesPresent')
  parent=$(json ps2.result.json '.pagemaps[0].pagesParent')
  read -r w p < <(criu_stats local2)
  note "criu pre-dump --tls → predump page-server --tls: $present pages stored, $parent left to ps1 (criu: $w written, $p parent)"
  expect_eq "$present" "$w" "pages stored by the server against pages criu wrote"
  expect_between "$present" 512 4000 "pages the second pre-dump sent"
  [ "$parent" -gt 0 ] || fail "the second pre-dump left nothing to the parent: holes were not used"

  # 256 more, between the second pre-dump and the dump.
  wl dirty-range 1024 256 >/dev/null

  step "criu dump → predump page-server, on top of the pre-dumps"
  ps_start ps3 --prev-images-dir ../ps2
  criu_do dump -t "$WL_PID" -D local3 --track-mem --prev-images-dir ../local2 \
    --page-server --address 127.0.0.1 --port "$PS_PORT"
  ps_wait ps3
  present=$(json ps3.result.json '.pagemaps[0].pagesPresent')
  parent=$(json ps3.result.json '.pagemaps[0].pagesParent')
  note "criu dump → predump page-server: $present pages stored, $parent left to ps2"
  expect_between "$present" 256 4000 "pages the dump sent"
  [ "$parent" -gt 0 ] || fail "the dump left nothing to the parent: holes were not used"

  step "criu restore from the server's directory"
  # The dump's own images next to its pages (not its parent link: ps3 has its own).
  find local3 -maxdepth 1 -type f -exec cp {} ps3/ \;
  criu_do restore -D ps3 -d
  wl_check
}
