#!/usr/bin/env bash
# Checks that vendor/pingora-core is pingora-core 0.9.1 as published on crates.io plus
# vendor/pingora-core.patch and nothing else (run by .ci/run; see vendor/README.md).
#   vendor/check.sh           compare
#   vendor/check.sh --write   rebuild vendor/pingora-core from the crate and the patch
set -euo pipefail
cd "$(dirname "$0")"
version=0.9.1
sha256=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/pingora-core-$version.crate 2>/dev/null | head -1 || true)
if [ -z "$crate" ]; then
  crate=$work/pingora-core-$version.crate
  curl -fsSL -o "$crate" "https://static.crates.io/crates/pingora-core/pingora-core-$version.crate"
fi
echo "$sha256  $crate" | sha256sum --check --quiet
tar xzf "$crate" -C "$work"
tree=$work/pingora-core-$version
# Not part of a path dependency: the crate's own lock file, its unnormalised manifest, cargo's marker.
rm -f "$tree/Cargo.lock" "$tree/Cargo.toml.orig" "$tree/.cargo-ok"
(cd "$tree" && git apply -p1 "$OLDPWD/pingora-core.patch")

if [ "${1:-}" = "--write" ]; then
  rm -rf pingora-core
  cp -r "$tree" pingora-core
  echo "vendor/pingora-core rebuilt from pingora-core $version and pingora-core.patch"
elif diff -r "$tree" pingora-core; then
  echo "vendor/pingora-core is pingora-core $version plus pingora-core.patch"
else
  echo "vendor/pingora-core differs from pingora-core $version plus pingora-core.patch (above)" >&2
  exit 1
fi
