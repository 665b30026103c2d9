# Sourced by scripts/pack-release and .ci/aarch64: the cross-compiling toolchain.
# shellcheck shell=bash
#
#   cross_setup RUST-TARGET...   adds the Rust targets that are missing (rustup) and
#                                puts cargo-zigbuild and zig on PATH, installing both
#                                from PyPI into a venv under the cache when missing
#
# Why zig (through cargo-zigbuild): one toolchain for the four targets; its glibc
# stubs link a binary against an old glibc's symbol versions (2.17, as napi-rs's
# prebuilt packages) on a recent build machine, a newer symbol failing the link;
# and it ships musl for both architectures. Debian's gcc-aarch64-linux-gnu links
# against Debian 12's glibc 2.36 and has no musl.
# Environment: PACK_TOOLS, where the venv goes (default
# ${XDG_CACHE_HOME:-~/.cache}/predump/zig).

cross_setup() {
  command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup) first" >&2; return 1; }
  local installed t
  installed=$(rustup target list --installed 2>/dev/null || true)
  for t in "$@"; do
    grep -qx "$t" <<<"$installed" && continue
    echo "cross: adding the Rust target $t" >&2
    rustup target add "$t" >&2 || return 1
  done
  command -v cargo-zigbuild >/dev/null && return 0
  local xdg_cache=${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}
  local tools=${PACK_TOOLS:-${xdg_cache:-/tmp}/predump/zig}
  if [ ! -x "$tools/bin/cargo-zigbuild" ]; then
    echo "cross: installing cargo-zigbuild and zig (PyPI) into $tools" >&2
    rm -rf "$tools.tmp"
    python3 -m venv "$tools.tmp" || {
      echo "cross: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
      return 1
    }
    # Pinned: the versions these scripts were tried with.
    "$tools.tmp/bin/pip" install -q --disable-pip-version-check \
      'cargo-zigbuild==0.24.1' 'ziglang==0.17.1' >&2 || return 1
    rm -rf "$tools" && mv "$tools.tmp" "$tools"
  fi
  # The venv's python runs `python -m ziglang`, which is how cargo-zigbuild finds zig.
  export PATH=$tools/bin:$PATH
}
