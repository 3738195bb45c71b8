#!/usr/bin/env bash
# Vendor uPlot from npm at a pinned version into lorascope/_vendor/uplot/ (needs npm).
#   scripts/vendor_uplot.sh [VERSION]    (default: the version in SOURCE.md)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=lorascope/_vendor/uplot
version=${1:-$(sed -n 's/.*version \*\*\([0-9.]*\)\*\*.*/\1/p' "$dest/SOURCE.md")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "uplot@$version" --silent > /dev/null)
tgz="$tmp/uplot-$version.tgz"
want=$(npm view "uplot@$version" dist.integrity)
got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
[ "$want" = "$got" ] || { echo "integrity mismatch: $got != $want" >&2; exit 1; }
tar xzf "$tgz" -C "$tmp"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$dest/"
echo "uplot $version: $want"
echo "update $dest/SOURCE.md if the version changed"
