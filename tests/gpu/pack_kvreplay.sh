#!/bin/bash
# Pack the built kvreplay with the shared libraries it loads (all but the C library's own), for
# a GPU machine that has no HDF5, GSL or OpenBLAS (the device tool's machines: PyTorch,
# transformers, h5py's bundled HDF5 only):
#   bash tests/gpu/pack_kvreplay.sh .dev/kvreplay.tar.xz      (here, after make)
#   tar -C /tmp/kv -xJf .dev/kvreplay.tar.xz; BIN=/tmp/kv/bin bash tests/gpu/run.sh OUT   (there)
# bin/kvreplay in the pack is a wrapper that points LD_LIBRARY_PATH at the packed libraries for
# kvreplay alone (Python and its h5py keep their own). ~13 MB with OpenBLAS; the device tool
# carries at most 64 MiB with the working tree (name .dev in `carry`, list it in
# .git/info/exclude).
set -eu
out=${1:?usage: tests/gpu/pack_kvreplay.sh OUT.tar.xz}
root=$(cd "$(dirname "$0")/../.." && pwd)
exe=$root/bin/kvreplay
[ -x "$exe" ] || { echo "pack_kvreplay: $exe not built (make)" >&2; exit 1; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
mkdir -p "$w/bin" "$w/lib"
cp "$exe" "$w/bin/kvreplay.real"
ldd "$exe" | awk '$3 ~ /^\// {print $3}' | while read -r l; do
    case $(basename "$l") in
        libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
        *) cp -L "$l" "$w/lib/" ;;
    esac
done
cat > "$w/bin/kvreplay" <<'WRAP'
#!/bin/sh
d=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/bin/kvreplay.real" "$@"
WRAP
chmod +x "$w/bin/kvreplay"
"$w/bin/kvreplay" --version > /dev/null
mkdir -p "$(dirname "$out")"
tar -C "$w" -cJf "$out" bin lib
echo "pack_kvreplay: $out ($(du -h "$out" | cut -f1); $(ls "$w/lib" | wc -l) libraries)"
