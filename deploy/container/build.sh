#!/usr/bin/env bash
# Build the gatehouse container image on a Debian machine, from files on the machine only
# (`FROM scratch`: no registry is contacted for a base image).
#
#   deploy/container/build.sh            # as root (buildah with the vfs driver needs it)
#
# Steps: install buildah (Debian's package) and the tools below if absent; build the
# release binary; stage a root filesystem with the binary, exactly the shared libraries
# `ldd` names for it, a passwd/group entry for the non-root user (65532, `gatehouse`), the
# CA bundle and the CycloneDX SBOM of the binary's crates; `buildah bud` it; export it as
# an OCI archive; print the image size.
#
# Environment:
#   IMAGE              image name (default localhost/gatehouse:<version from Cargo.toml>)
#   OUT                output folder (default <cargo target dir>/container)
#   CARGO_TARGET_DIR   honoured, as by cargo
#   BIN                a gatehouse binary built before (skips `cargo build --release`)
# Output in $OUT: gatehouse.cdx.json (SBOM), gatehouse-<version>.oci.tar (the image, for
# `skopeo copy oci-archive:... docker://your-registry/...` or `podman load`), context/ (what
# was copied into the image).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

need_apt=()
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v strip >/dev/null 2>&1 || need_apt+=(binutils)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! cargo cyclonedx --version >/dev/null 2>&1; then
  cargo install cargo-cyclonedx --locked --version 0.5.9
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-localhost/gatehouse:$version}
target_dir=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$target_dir/container}
bud=(buildah --storage-driver vfs)

if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --locked --bin gatehouse
  bin=$target_dir/release/gatehouse
fi

ctx=$OUT/context
rm -rf "$ctx"
rootfs=$ctx/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/etc/gatehouse" \
  "$rootfs/usr/share/doc/gatehouse" "$rootfs/tmp" "$ctx/audit"
chmod 1777 "$rootfs/tmp"

# The binary without its line tables (the release profile keeps them for profiling):
# symbol names stay, so a panic's backtrace still names functions.
strip --strip-debug -o "$rootfs/usr/local/bin/gatehouse" "$bin"
chmod 0755 "$rootfs/usr/local/bin/gatehouse"

# Exactly the libraries this binary loads, at the paths its loader looks for them
# (the dynamic loader itself included, at its PT_INTERP path).
ldd_out=$(ldd "$bin" 2>&1) || true
if grep -q 'not found' <<<"$ldd_out"; then
  echo "build.sh: $bin needs a library that is not installed:" >&2
  echo "$ldd_out" >&2
  exit 1
fi
libs=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$ldd_out" | sort -u)
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/nonexistent:/sbin/nologin
gatehouse:x:65532:65532:gatehouse:/nonexistent:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
gatehouse:x:65532:
GROUP
# Host names (IdP discovery, upstream names) through /etc/hosts, then DNS; the container
# runtime provides /etc/hosts and /etc/resolv.conf.
echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
# Trust roots for HTTPS to identity providers (an issuer's `ca` adds to these).
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"

# CycloneDX SBOM of the crates compiled into the binary (no dev or build dependencies).
# `--describe binaries` writes <bin>_bin.cdx.json beside Cargo.toml.
cargo cyclonedx --format json --spec-version 1.5 --describe binaries --no-build-deps >/dev/null
mv gatehouse_bin.cdx.json "$OUT/gatehouse.cdx.json"
cp "$OUT/gatehouse.cdx.json" "$rootfs/usr/share/doc/gatehouse/gatehouse.cdx.json"

# The previous build under this name goes (its storage would pile up); kept if in use.
"${bud[@]}" rmi "$IMAGE" >/dev/null 2>&1 || true
"${bud[@]}" bud --quiet --layers=false --build-arg "VERSION=$version" \
  -f deploy/container/Containerfile -t "$IMAGE" "$ctx" >/dev/null

archive=$OUT/gatehouse-$version.oci.tar
rm -f "$archive"
"${bud[@]}" push --quiet "$IMAGE" "oci-archive:$archive:$IMAGE"

size=$("${bud[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)
echo "image $IMAGE: $size uncompressed; OCI archive $(du -h "$archive" | cut -f1) ($archive)"
echo "  binary $(du -h "$rootfs/usr/local/bin/gatehouse" | cut -f1), libraries: $(echo $libs)"
echo "  SBOM $OUT/gatehouse.cdx.json: $(grep -o '"type": *"library"' "$OUT/gatehouse.cdx.json" | wc -l) crates"
