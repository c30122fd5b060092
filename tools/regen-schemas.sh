#!/usr/bin/env bash
# Regenerates the checked-in flatbuffers Rust code (client/src/wire/generated)
# from client/schemas/*.fbs with a pinned flatc (23.5.26, built from vendored sources by
# tools/flatc-regen), formatted with rustfmt.
#
#   tools/regen-schemas.sh           regenerate client/src/wire/generated in place
#   tools/regen-schemas.sh --check   exit 1 (and print the diff) if the
#                                    checked-in code differs from a fresh run
#
# Environment:
#   CARGO_TARGET_DIR_FLATC  cargo target dir for the tool (default
#                           target/flatc-regen; relative paths are relative to
#                           the repo root). The first build compiles flatc
#                           from C++ (needs cmake + a C++ compiler, ~2-3 min).
#   CARGO_NET_OFFLINE=true  regenerate without network once the crates
#                           (flatc, cmake, cc, ...) are in the cargo cache.
#
# Files in client/src/wire/generated that flatc does not produce (mod.rs) are
# hand-written: they are left alone and ignored by --check.
set -euo pipefail

usage() {
    echo "usage: $0 [--check]" >&2
}

mode=write
case "$#:${1:-}" in
    0:) ;;
    1:--check) mode=check ;;
    1:-h | 1:--help)
        usage
        exit 0
        ;;
    *)
        usage
        exit 2
        ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

gen_dir="client/src/wire/generated"
# Hand-written files living next to the generated ones.
handwritten=(mod.rs)

command -v cargo >/dev/null || { echo "regen-schemas: cargo not found" >&2; exit 1; }
command -v rustfmt >/dev/null || { echo "regen-schemas: rustfmt not found" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ringmq-regen.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
out="$tmp/out"

# 1. Generate into a scratch directory (both modes), so --check and in-place
#    regeneration produce byte-identical output.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR_FLATC:-target/flatc-regen}" \
    cargo run --quiet --release --locked \
    --manifest-path tools/flatc-regen/Cargo.toml -- "$out"

shopt -s nullglob globstar
generated=("$out"/**/*.rs)
shopt -u globstar
if [ ${#generated[@]} -eq 0 ]; then
    echo "regen-schemas: flatc produced no Rust files" >&2
    exit 1
fi

# 2. Format with rustfmt's defaults and an explicit empty config, so the
#    result does not depend on where the scratch directory is (rustfmt would
#    otherwise search its ancestors and the user's config dir). The module is
#    `#[rustfmt::skip]` in mod.rs, so `cargo fmt` leaves this output alone.
fmt_config="$tmp/rustfmt.toml"
: >"$fmt_config"
rustfmt --edition 2021 --config-path "$fmt_config" "${generated[@]}"

excludes=()
for f in "${handwritten[@]}"; do
    excludes+=(--exclude="$f")
done

# 3. Compare or install.
if [ "$mode" = check ]; then
    if [ ! -d "$gen_dir" ]; then
        echo "regen-schemas: $gen_dir does not exist; run tools/regen-schemas.sh" >&2
        exit 1
    fi
    if diff -ru "${excludes[@]}" "$gen_dir" "$out"; then
        echo "regen-schemas: $gen_dir is up to date"
    else
        echo "regen-schemas: $gen_dir is out of date with client/schemas/*.fbs;" \
            "run tools/regen-schemas.sh and commit the result" >&2
        exit 1
    fi
else
    mkdir -p "$gen_dir"
    # Drop stale generated files (e.g. of a removed schema), keep hand-written ones.
    shopt -s globstar
    for f in "$gen_dir"/**/*_generated.rs; do
        rm -f "$f"
    done
    shopt -u globstar
    cp -R "$out"/. "$gen_dir"/
    echo "regen-schemas: regenerated $gen_dir"
fi
