import type { Flags, GroupSpec } from './args.js';

/**
 * What every command takes: its arguments, its flags and what they mean. The parser reads these
 * (cli/args.ts parseCommand) and every help text is rendered from them (cli/help.ts), so the two
 * cannot drift. A new flag: one line in its group's flags, its name in each subcommand that takes it.
 *
 * This module imports nothing heavy: `deskfuse --help` loads it without the server or SQLite.
 */

/** Global options every command takes. */
export const GLOBAL_OPTIONS = {
  server: { type: 'string', arg: 'URL', help: 'image server, or several: URL,URL… (failover; env DESKFUSE_SERVER, default http://127.0.0.1:8080; HOST:PORT means http://HOST:PORT)' },
  token: { type: 'string', arg: 'T', help: 'API token (env DESKFUSE_TOKEN; default: $DESKFUSE_DATA/admin.token or ./data/admin.token if readable)' },
  ca: { type: 'string', arg: 'FILE', help: 'with an https:// server: trust only this CA (PEM; env DESKFUSE_CA; default $DESKFUSE_DATA/tls/ca.crt or ./data/tls/ca.crt if readable, else the system CAs)' },
  'ca-fingerprint': { type: 'string', arg: 'SHA256', help: "with an https:// server: trust only the CA of its chain with this SHA-256 (AB:CD:… as the server printed it; env DESKFUSE_CA_FINGERPRINT)" },
  json: { type: 'boolean', default: false, help: 'print one JSON object (errors too) for scripts' },
  help: { type: 'boolean', short: 'h', default: false, help: 'this help' },
} as const satisfies Flags;

const group = <const F extends Flags>(g: GroupSpec<F>): GroupSpec<F> => g;

const RETENTION = 'retention: keep the last N versions of each ref\'s line, every version younger than D days, a conflict\'s version C days';

export const SERVER = group({
  name: 'server',
  about: 'the appliance: HTTP API, network boot, NBD for VDI',
  flags: {
    data: { type: 'string', arg: 'DIR', help: 'data directory (env DESKFUSE_DATA; default ./data)' },
    meta: { type: 'string', arg: 'sqlite|postgres://…', help: 'metadata: sqlite (DIR/meta.sqlite, one server) or postgres://USER:PASS@HOST:PORT/DB (env DESKFUSE_META; several servers)' },
    store: { type: 'string', arg: 's3://BUCKET/PREFIX?endpoint=URL&region=R', help: 'chunk store: local (under --data, the default), or S3 (env DESKFUSE_STORE) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and a disk cache in DIR/store-cache (config storeCacheMiB, default 4096)' },
    'server-name': { type: 'string', arg: 'NAME', help: 'this server\'s name among several on one database (env DESKFUSE_SERVER_NAME; default the host name): a VDI session lives on the server that made it' },
    listen: { type: 'string', arg: 'HOST:PORT', help: 'HTTP address (env DESKFUSE_LISTEN; default 127.0.0.1:8080; 0.0.0.0:8080 serves the network)' },
    config: { type: 'string', arg: 'FILE', help: 'a JSON config file, keys named as the flags in camelCase (data, listen, logLevel, …; see deploy/deskfuse.example.json); flags win over env over file' },
    'log-level': { type: 'string', arg: 'LEVEL', help: 'fatal, error, warn, info, debug, trace or silent (env DESKFUSE_LOG_LEVEL); each HTTP request is one line at debug (at info only failed or slow ones); secrets are never logged' },
    'log-format': { type: 'string', arg: 'auto|pretty|json', help: 'pretty (readable lines) or json; auto (the default): pretty on a terminal, json otherwise (env DESKFUSE_LOG_FORMAT)' },
    'metrics-listen': { type: 'string', arg: 'HOST:PORT|off', help: 'serve GET /metrics there without a token (Prometheus on a trusted network; env DESKFUSE_METRICS_LISTEN; default off); on the main address /metrics takes an admin or a metrics token (token create --scope metrics)' },
    dhcp: { type: 'string', arg: 'off|proxy|full', help: 'network boot: off (the site DHCP points PXE at us), proxy (PXE answers beside the site DHCP), full (address pool); with DHCP on, TFTP serves the iPXE binaries on 0.0.0.0:69 and IPv6 RAs (lifetime 0) spare iPXE its IPv6 wait (env DESKFUSE_DHCP)' },
    interface: { type: 'string', arg: 'IF', help: 'the boot interface (env DESKFUSE_INTERFACE)' },
    'dhcp-range': { type: 'string', arg: 'FIRST,LAST', help: 'the address pool of --dhcp full' },
    'tftp-listen': { type: 'string', arg: 'HOST:PORT|off', help: 'TFTP address (default 0.0.0.0:69 with DHCP on)' },
    'public-url': { type: 'string', arg: 'URL', help: 'how endpoints reach this server (default: the Host they used)' },
    'boot-dir': { type: 'string', arg: 'DIR', help: 'holds vmlinuz + initrd.img (default initramfs/out, made by npm run build:initramfs)' },
    'auto-enrol': { type: 'string', arg: 'off|on|DESKTOP', help: 'enrol unknown machines at once (on), or and assign them DESKTOP' },
    'no-ipv6-ra': { type: 'boolean', help: 'send no IPv6 router advertisements' },
    'nbd-listen': { type: 'string', arg: 'HOST[:PORT]|off', help: 'NBD for the VDI pool (default: the --listen host, port 10809; env DESKFUSE_NBD_LISTEN); export names carry a token (IMAGE@REF:TOKEN, session/ID:SECRET)' },
    'nbd-anonymous-read': { type: 'boolean', help: 'open (and list) image exports without a token' },
    'nbd-tls': { type: 'string', arg: 'off|on|required', help: 'NBD over TLS (NBD_OPT_STARTTLS) with the server certificate: required refuses clients in clear (default: required when TLS is on, else off; env DESKFUSE_NBD_TLS)' },
    tls: { type: 'string', arg: 'auto|on|off', help: 'HTTPS for the API, the console and the boot stage (env DESKFUSE_TLS): on = a private CA made in DIR/tls (its fingerprint printed once) or config tls.certFile/keyFile; auto (the default) = on unless --listen is loopback; plain HTTP then serves only what iPXE fetches first' },
    'https-listen': { type: 'string', arg: 'HOST:PORT', help: 'HTTPS address with TLS on (env DESKFUSE_HTTPS_LISTEN; default: the --listen host, port 8443)' },
  },
  subs: {
    '': {
      flags: ['data', 'meta', 'store', 'server-name', 'listen', 'config', 'log-level', 'log-format', 'metrics-listen', 'dhcp', 'interface', 'dhcp-range', 'tftp-listen', 'public-url', 'boot-dir', 'auto-enrol', 'no-ipv6-ra', 'nbd-listen', 'nbd-anonymous-read', 'nbd-tls', 'tls', 'https-listen'],
      about: 'Run the appliance. No config needed: data in ./data, HTTP on 127.0.0.1:8080; the first start prints the admin token once and saves it to DIR/admin.token (mode 0600).',
      local: true,
    },
  },
});

const IMAGE_FIELDS = { 'params.image': 'NAME', 'querystring.ref': 'NAME[@REF|@VERSION]' };

export const IMAGE = group({
  name: 'image',
  about: 'disk images: their versions, refs, export, retention',
  flags: {
    from: { type: 'string', arg: 'FILE', help: 'the disk: raw, or anything qemu-img reads (qcow2, vmdk, vhdx, vdi …); only allocated extents are read' },
    'chunk-size': { type: 'string', arg: 'N', help: 'chunk size in bytes, or 64K, 1M … (default 64K)' },
    trust: { type: 'string', arg: 'FILE', help: 'a trust file (deskfuse key show --trust-out FILE): the keys to verify with; keys they endorse through the server\'s chain count too' },
    ref: { type: 'string', arg: 'REF', default: 'main', help: 'the ref the new version goes on; a ref that does not exist yet branches from main' },
    parent: { type: 'string', arg: 'VERSION', help: 'the version it changes (default: the ref\'s head; another one makes a conflict version)' },
    message: { type: 'string', short: 'm', arg: 'MSG', default: '', help: 'what changed (image log shows it)', showShort: true },
    'allow-empty': { type: 'boolean', default: false, help: 'make a version even when nothing changed since the parent' },
    to: { type: 'string', arg: 'FILE|DIR', help: 'the file to write (it appears under its name only when complete), or an existing directory: it gets NAME-vN.img (or .qcow2)' },
    format: { type: 'string', arg: 'raw|qcow2', default: 'raw', help: 'raw (sparse) or qcow2 (via qemu-img)' },
    limit: { type: 'string', arg: 'N', default: '50', help: 'at most N versions' },
    'boot-partition': { type: 'string', arg: 'N', help: 'the partition (1-based) holding the kernel' },
    'boot-kernel': { type: 'string', arg: 'PATH', help: 'the kernel\'s absolute path on that partition (/vmlinuz)' },
    'boot-initrd': { type: 'string', arg: 'PATH', help: 'the initrd\'s absolute path on that partition (/initrd.img)' },
    'boot-cmdline': { type: 'string', arg: 'TEXT', help: 'the kernel command line ("root=… quiet")' },
    'keep-last': { type: 'string', arg: 'N', help: 'keep the last N versions of each ref\'s line ("default": the server\'s)' },
    'keep-days': { type: 'string', arg: 'D', help: 'keep every version younger than D days ("default": the server\'s)' },
    'conflict-days': { type: 'string', arg: 'C', help: 'keep a conflict\'s version C days ("default": the server\'s)' },
    'dry-run': { type: 'boolean', default: false, help: 'say what would go, change nothing' },
    verbose: { type: 'boolean', short: 'v', default: false, help: 'say why each kept version is kept' },
    force: { type: 'boolean', default: false, help: 'delete even while desktops use it' },
  },
  sets: {
    BOOT: {
      flags: ['boot-partition!', 'boot-kernel!', 'boot-initrd', 'boot-cmdline!'],
      help: 'the kernel the image\'s OS boots, for endpoints that hand off by kexec (all of them, --boot-initrd optional)',
    },
  },
  fields: IMAGE_FIELDS,
  subs: {
    create: {
      args: 'NAME', flags: ['from!', 'chunk-size', 'message', '@BOOT'],
      about: 'New image: version 1 on main, from a disk file. Rerun after an interruption, it resumes (chunks already stored are not sent again).',
      fields: { 'body.name': 'NAME', 'body.virtualSize': '--from', 'body.chunkSize': '--chunk-size' },
    },
    publish: {
      args: 'NAME', flags: ['from!', 'ref', 'parent', 'message', 'allow-empty', '@BOOT'],
      about: 'New version on a ref, uploading only the chunks the server lacks. The disk must have the image\'s virtual size. A disk identical to the parent makes no version ("nothing changed since version N") unless --allow-empty.',
      fields: { 'body.ref': '--ref', 'body.parent': '--parent', 'body.message': '--message' },
    },
    boot: {
      args: 'NAME', flags: ['boot-partition!', 'boot-kernel!', 'boot-initrd', 'boot-cmdline!'],
      about: 'Declare the kernel the image\'s OS boots (files on partition N), for the kexec hand-off.',
      fields: { 'body.partition': '--boot-partition', 'body.kernel': '--boot-kernel', 'body.initrd': '--boot-initrd', 'body.cmdline': '--boot-cmdline' },
    },
    list: { about: 'Images with their size, chunk size, versions and refs.' },
    show: { args: 'NAME', about: 'An image: size, chunks, versions, retention, and every ref with the version it is at.' },
    log: {
      args: 'NAME[@REF|@VERSION]', flags: ['limit'],
      about: 'Versions, newest first. NAME: every version of the image, each ref shown beside the version it is at; NAME@REF: that ref\'s line (its ancestry); NAME@VERSION: the ancestry of that version.',
    },
    verify: {
      args: 'NAME[@REF|@VERSION]', flags: ['trust!'],
      about: 'Check a version\'s signed manifest against trusted keys, and that its index hashes to what the manifest says (default: main\'s head). Exits 1 with DF_ERR_SIG_* when it does not verify.',
    },
    export: {
      args: 'NAME[@REF|@VERSION]', flags: ['to!', 'format', 'force'],
      about: 'Write a version to a file: raw is sparse, qcow2 via qemu-img (default: main\'s head).\n--to DIR: an existing directory gets NAME-vN.img (or .qcow2). '
        + 'An existing FILE is replaced only with --force. An interrupted export resumes from FILE.part on the next run (the chunks already there are not fetched again).',
      flagHelp: { force: 'replace an existing FILE' },
    },
    policy: {
      args: 'NAME', flags: ['keep-last', 'keep-days', 'conflict-days'],
      about: `Show or set the image's retention policy (${RETENTION}); "default" returns a value to the server's (retention.* in its config).`,
    },
    prune: {
      args: 'NAME', flags: ['dry-run', 'verbose'],
      about: 'Drop the versions outside the policy (the ref log keeps them); versions a ref, desktop, lease, VDI session or endpoint\'s disk holds always stay.',
    },
    delete: {
      args: 'NAME', flags: ['force'],
      about: 'Delete the image: its refs, versions and policy (the ref log stays); refused while desktops use it, unless --force.',
    },
  },
});

export const REF = group({
  name: 'ref',
  about: 'refs: named pointers at versions, moved by compare-and-swap',
  flags: {
    expect: { type: 'string', arg: 'OLD|none', help: 'the version the ref is at now, or none to create it (compare-and-swap)' },
    reason: { type: 'string', arg: 'TEXT', help: 'why, for the ref log (default "ref set")' },
    limit: { type: 'string', arg: 'N', default: '50', help: 'at most N entries' },
    force: { type: 'boolean', default: false, help: 'delete a conflict ref not resolved yet' },
  },
  fields: { 'params.*': 'REF', 'body.version': 'VERSION', 'querystring.ref': 'REF' },
  subs: {
    list: { args: 'IMAGE', about: 'The image\'s refs and the versions they are at.' },
    set: { args: 'IMAGE REF VERSION', flags: ['expect!', 'reason'], about: 'Move a ref by compare-and-swap: promote (test → main), roll back; --expect none creates it.' },
    log: { args: 'IMAGE [REF]', flags: ['limit'], about: 'Every ref move, newest first (with REF: that ref\'s).' },
    delete: { args: 'IMAGE REF', flags: ['force'], about: 'Delete a ref (the ref log records it); refused for a desktop\'s line, and for a conflict not resolved yet unless --force.' },
  },
});

export const DESKTOP = group({
  name: 'desktop',
  about: 'desktops: a user\'s line of an image, leased by the endpoint or VDI session using it',
  flags: {
    image: { type: 'string', arg: 'IMAGE', help: 'the image it runs' },
    from: { type: 'string', arg: 'REF', help: 'the ref it starts from (persistent) or follows (restore); default main' },
    mode: { type: 'string', arg: 'persistent|restore', default: 'persistent', help: 'persistent: its own ref desktops/NAME; restore: follows REF, local changes are discarded' },
    ttl: { type: 'string', arg: 'SECONDS', help: 'lifetime (default 30 days, at most 1 year)' },
    to: { type: 'string', arg: 'REF', help: 'the ref whose head it moves to (default: the ref it follows)' },
    expect: { type: 'string', arg: 'VERSION|none', help: 'only if the head is still VERSION (none: it has none yet); else DF_ERR_REF_MOVED and nothing changes' },
    force: { type: 'boolean', default: false, help: 'delete even while leased, in a VDI session or assigned to endpoints' },
  },
  fields: { 'body.ttlSeconds': '--ttl', 'body.name': 'NAME', 'body.image': '--image', 'body.from': '--from', 'body.to': '--to', 'body.expect': '--expect' },
  subs: {
    create: { args: 'NAME', flags: ['image!', 'from', 'mode'], about: 'A desktop: persistent gets its own ref desktops/NAME at REF\'s head; restore follows REF.' },
    list: { about: 'Desktops with their mode, line, the version a sync must reach, and the lease.' },
    show: { args: 'NAME', about: 'A desktop: mode, line, head, lease.' },
    token: { args: 'NAME', flags: ['ttl'], about: 'A token scoped to the desktop; prints only the token: T=$(deskfuse desktop token alice).' },
    reset: {
      args: 'NAME', flags: ['to', 'expect', 'force'],
      about: 'Persistent desktop: move desktops/NAME to REF\'s head (default: the ref it follows) by compare-and-swap, and print the head it dropped (kept in the ref log).\n'
        + 'Refused (DF_ERR_LEASE_HELD, naming the holder) while an endpoint or VDI session holds the lease, unless --force.',
      flagHelp: { force: 'reset anyway while another holds the lease; names the holder, whose next commit is then kept as a conflict' },
    },
    'lease break': { args: 'NAME', about: 'Break the desktop\'s lease (e.g. of a dead endpoint); the holder\'s later commits become conflicts.' },
    delete: { args: 'NAME', flags: ['force'], about: 'Delete the desktop: its ref, lease and tokens; refused while leased, in a VDI session or assigned to endpoints, unless --force.' },
  },
});

const AGENT_TOKEN = '--token (or DESKFUSE_TOKEN): the desktop\'s token (deskfuse desktop token NAME) or an admin token.';

export const AGENT = group({
  name: 'agent',
  about: 'the endpoint agent, on a disk or a disk file (the boot stage runs it too)',
  flags: {
    disk: { type: 'string', arg: 'PATH', help: 'the disk or disk file' },
    desktop: { type: 'string', arg: 'NAME', help: 'the desktop it holds' },
    force: { type: 'boolean', default: false, help: 'take the desktop\'s lease from another holder, named on stderr (its later commit becomes a conflict)' },
    reprovision: { type: 'boolean', default: false, help: 'overwrite a disk that belongs to another image or desktop' },
    holder: { type: 'string', arg: 'ID', help: 'the lease holder\'s name (default agent:HOST:PATH)' },
    message: { type: 'string', short: 'm', arg: 'MSG', help: 'the message of the version a commit makes (image log shows it)', showShort: true },
    scan: { type: 'boolean', default: false, help: 'hash the whole disk even when it is sealed clean (a disk file written since its seal is scanned anyway: its mtime moved; a block device\'s writes leave no such trace)' },
    progress: { type: 'boolean', default: false, help: 'the progress line (percent) on stderr also when it is not a terminal (default: only on a terminal)' },
    trust: { type: 'string', arg: 'FILE', help: 'a trust file (deskfuse key show --trust-out FILE; the boot stage\'s /etc/deskfuse/trust.json): the version-signing keys to trust while the disk records none. Without it and without keys on the disk, the server\'s first key is trusted on first use' },
    'max-head-age': { type: 'string', arg: 'SECONDS', help: 'refuse (DF_ERR_SIG_STALE) a signed head older than this (default 86400): a frozen or replayed answer' },
    'lease-ttl': { type: 'string', arg: 'SECONDS', help: 'how long the desktop\'s lease lasts unless renewed (default 300; 10-86400). The agent renews it while it runs; after a sync, the endpoint\'s OS renews it (POST /boot/keepalive, initramfs/os-integration), so a dead endpoint frees the desktop within this time' },
  },
  subs: {
    sync: {
      flags: ['disk!', 'desktop!', 'force', 'reprovision', 'holder', 'message', 'scan', 'progress', 'lease-ttl', 'trust', 'max-head-age'], notes: AGENT_TOKEN,
      flagHelp: { message: 'the message of the version made of the disk\'s local changes, if any (image log shows it)' },
      about: 'Bring the disk to the desktop\'s head: a blank disk is provisioned; a dirty one is scanned and its local changes committed first (persistent) or overwritten (restore); an interrupted sync resumes.',
    },
    commit: {
      flags: ['disk!', 'desktop', 'message', 'force', 'scan', 'progress', 'holder', 'lease-ttl'], notes: AGENT_TOKEN,
      flagHelp: {
        desktop: 'the desktop the disk must hold (default: the one its state area names)',
        force: 'take the desktop\'s lease from another holder, named on stderr (its later commit becomes a conflict). Without it, a commit while another holds the lease is kept as a conflict version',
      },
      about: 'Commit the disk\'s local changes to its desktop, seal it clean, release the lease (exit 3 when kept as a conflict).\n'
        + 'A disk sealed clean is not scanned unless its file changed since the seal (--scan hashes it anyway). '
        + 'While another holds the desktop\'s lease, the changes become a conflict ref (nothing is lost), unless --force takes the lease.',
    },
    status: { flags: ['disk!'], about: 'What the disk\'s state area says (no server needed): state, image, desktop, version, progress, last failure.', local: true },
    handoff: { flags: ['disk!'], about: 'Mark the disk in use by the OS (called right before booting it): the next sync or commit scans it.', local: true },
  },
});

export const ENDPOINT = group({
  name: 'endpoint',
  about: 'the machines that network-boot (ID: an endpoint\'s id, name or MAC)',
  flags: {
    desktop: { type: 'string', arg: 'NAME', help: 'the desktop it runs ("none": no desktop)' },
    name: { type: 'string', arg: 'NAME', help: 'its name (1-64 letters, digits, dots, dashes or underscores)' },
    mode: { type: 'string', arg: 'sync|local', help: 'sync: the boot stage syncs the disk; local: boots its disk as it is' },
    'boot-method': { type: 'string', arg: 'auto|kexec|sanboot|exit|bootnext', help: 'how the boot stage hands off to the disk\'s OS' },
    follow: { type: 'boolean', short: 'f', default: false, help: 'keep printing events as they happen' },
    force: { type: 'boolean', default: false, help: 'delete even while it holds a lease or is enrolled with a desktop' },
  },
  fields: { 'body.mac': 'MAC', 'body.name': '--name', 'body.desktop': '--desktop', 'body.mode': '--mode', 'body.bootMethod': '--boot-method', 'querystring.endpoint': 'ID' },
  subs: {
    list: { about: 'Endpoints: state, desktop, mode, disk, last seen, last sync.' },
    show: { args: 'ID', about: 'An endpoint: MACs, firmware, disk and its secret, last sync, recent boot events.' },
    add: { args: 'MAC', flags: ['desktop', 'name', 'mode', 'boot-method'], about: 'Register a machine before its first boot (enrolled at once).' },
    approve: { args: 'ID', flags: ['desktop', 'name', 'mode', 'boot-method'], about: 'Enrol a pending endpoint.' },
    assign: { args: 'ID', flags: ['desktop', 'mode', 'boot-method', 'name'], about: 'Change an endpoint (a new desktop reprovisions the disk at the next boot).' },
    disable: { args: 'ID', about: 'Disable: it boots its local disk and never gets a boot token.' },
    reprovision: { args: 'ID', about: 'Its next boot provisions the disk with a new secret (a replaced disk, a lost state area).' },
    delete: { args: 'ID', flags: ['force'], about: 'Delete an endpoint: its next boot is an unknown machine\'s; refused while it holds a lease or is enrolled with a desktop, unless --force.' },
    events: { args: '[ID]', flags: ['follow'], about: 'Boot events (dhcp, tftp, script, kernel, initrd, agent, synced, committed, local, poweroff, error, refused).' },
  },
});

export const VDI = group({
  name: 'vdi',
  about: 'VDI sessions: a desktop run from the server over NBD',
  flags: {
    force: { type: 'boolean', default: false, help: 'take the desktop\'s lease from its holder' },
    'no-auto-commit': { type: 'boolean', default: false, help: 'do not commit when the VM shuts down (commit or discard by hand)' },
    desktop: { type: 'string', arg: 'NAME', help: 'only this desktop\'s sessions' },
    all: { type: 'boolean', default: false, help: 'committed and discarded sessions too' },
    vnc: { type: 'string', arg: ':N', help: 'VNC display N (default: serial console on stdout)' },
    memory: { type: 'string', arg: 'MIB', default: '2048', help: 'the VM\'s memory in MiB' },
    cpus: { type: 'string', arg: 'N', default: '2', help: 'the VM\'s CPUs' },
    accel: { type: 'string', arg: 'auto|kvm|tcg', default: 'auto', help: 'KVM when it works (auto), or TCG' },
    net: { type: 'string', arg: 'user|none', default: 'user', help: 'the VM\'s network' },
    'print-libvirt-xml': { type: 'boolean', default: false, help: 'print a libvirt domain for the session instead of running QEMU (virsh create FILE)' },
    'wait-seconds': { type: 'string', arg: 'S', default: '600', help: 'how long to wait for the session\'s commit after QEMU exits' },
    'tls-dir': { type: 'string', arg: 'DIR', help: 'NBD over TLS: DIR/ca-cert.pem is the server\'s CA (its <data>/tls/ca.crt), or DIR/keys.psk with --tls-username; needed when the server speaks TLS (its URL is nbds://)' },
    'tls-username': { type: 'string', arg: 'NAME', help: 'NBD over TLS with a pre-shared key: the identity in DIR/keys.psk (psktool format)' },
    firmware: { type: 'string', arg: 'uefi|bios', default: 'uefi', help: 'UEFI (OVMF on q35: the desktop boots its ESP as at a UEFI VOI endpoint) or BIOS (SeaBIOS on i440fx: disks with MBR boot code only)' },
    'secure-boot': { type: 'boolean', default: false, help: 'UEFI Secure Boot: OVMF\'s secure-boot build with Microsoft\'s keys enrolled, SMM on (Windows 11; a boot loader signed by Microsoft or a shim)' },
    tpm: { type: 'boolean', default: false, help: 'a TPM 2.0 (swtpm, started and stopped with the VM; its state kept per desktop in --state-dir)' },
    'disk-bus': { type: 'string', arg: 'virtio|sata', default: 'virtio', help: 'the disk\'s bus: virtio (Windows needs the virtio-win storage driver in the image) or sata (AHCI: every OS has its driver)' },
    'nic-model': { type: 'string', arg: 'virtio|e1000e', default: 'virtio', help: 'the NIC: virtio-net (Windows needs virtio-win\'s NetKVM) or e1000e (a driver in every Windows)' },
    'state-dir': { type: 'string', arg: 'DIR', help: 'where this host keeps each desktop\'s UEFI variables and TPM state, DIR/DESKTOP/ (default $DESKFUSE_VDI_STATE_DIR, else /var/lib/deskfuse/vdi as root, else ~/.local/state/deskfuse/vdi)' },
  },
  fields: { 'body.desktop': 'DESKTOP', 'querystring.desktop': '--desktop' },
  subs: {
    'session create': {
      args: 'DESKTOP', flags: ['force', 'no-auto-commit'],
      about: 'Start a VDI session: takes the desktop\'s lease; prints the session and its NBD URL (the URL carries the session\'s secret, shown once).',
    },
    'session list': { flags: ['desktop', 'all'], about: 'Open sessions: base, state, clients, last disconnect, outcome.' },
    'session show': { args: 'ID', about: 'A session: its cloud increment, owning server, last checkpoint.', argHelp: { ID: 'a session id: 10 hex digits, as deskfuse vdi session list shows' } },
    'session commit': {
      args: 'ID', flags: ['force'],
      about: 'Commit the cloud increment as a vdi-commit version (exit 3 when kept as a conflict). Through another server than the session\'s: commits its last checkpoint once that server serves no client.',
      flagHelp: { force: 'the session\'s server is dead: commit its last checkpoint anyway' },
      argHelp: { ID: 'a session id: 10 hex digits, as deskfuse vdi session list shows' },
    },
    'session discard': {
      args: 'ID', flags: ['force'],
      about: 'Drop the cloud increment and release the lease.',
      flagHelp: { force: 'the session\'s server is dead: discard anyway' },
      argHelp: { ID: 'a session id: 10 hex digits, as deskfuse vdi session list shows' },
    },
    start: {
      args: 'DESKTOP', flags: ['vnc', 'memory', 'cpus', 'accel', 'net', 'firmware', 'secure-boot', 'tpm', 'disk-bus', 'nic-model', 'state-dir', 'force', 'print-libvirt-xml', 'wait-seconds', 'tls-dir', 'tls-username'], passthrough: 'QEMU ARGS',
      about: 'On a hypervisor host: create a session, run qemu-system-x86_64 on its export (KVM when it works, TCG otherwise; UEFI on q35 unless --firmware bios), wait for the VM to shut down and report the commit (exit 0, 3 conflict, 1 if the session stayed open).',
    },
  },
});

export const TOKEN = group({
  name: 'token',
  about: 'API tokens (never shown again after they are made)',
  flags: {
    scope: { type: 'string', arg: 'SCOPE', help: 'hypervisor[:NAME] (vdi start: its own VDI sessions, nothing else), desktop:NAME, metrics (GET /metrics and nothing else, for Prometheus), or admin' },
    ttl: { type: 'string', arg: 'SECONDS', help: 'lifetime (default 30 days, at most 1 year)' },
  },
  fields: { 'body.ttlSeconds': '--ttl', 'body.scope': '--scope' },
  subs: {
    list: { about: 'Tokens: id, scope, created, expires, last used (never a secret).' },
    create: { flags: ['scope!', 'ttl'], about: 'A new token; prints only the token: T=$(deskfuse token create --scope hypervisor).' },
    revoke: { args: 'ID', about: 'Revoke a token: its next request is refused (the last admin token stays).', argHelp: { ID: 'a token id: 16 hex digits, as deskfuse token list shows' } },
  },
});

export const STORE = group({
  name: 'store',
  about: 'the chunk store: verify, garbage collection, usage',
  flags: {
    data: { type: 'string', arg: 'DIR', help: 'the install\'s data directory (env DESKFUSE_DATA; default ./data)' },
    meta: { type: 'string', arg: 'URL', help: 'its metadata database, as the server\'s --meta' },
    store: { type: 'string', arg: 'URL', help: 'its chunk store, as the server\'s --store (s3://: the bucket itself is read, not a server\'s cache)' },
    config: { type: 'string', arg: 'FILE', help: 'the server\'s config file' },
    'dry-run': { type: 'boolean', default: false, help: 'say what would be deleted, change nothing' },
  },
  subs: {
    verify: {
      flags: ['data', 'meta', 'store', 'config'], local: true,
      about: 'Read back every chunk, layer and index (decompress + hash) and check every version has its chunks; lists each corrupt or missing one and exits 1 if any; removes stale temp files of interrupted writes.',
    },
    gc: {
      flags: ['dry-run'],
      about: 'One garbage collection on the server: unreferenced objects older than the grace period become candidates; candidates of an earlier run still unreferenced are removed.',
    },
    usage: { about: 'Bytes stored by kind and by image, and what garbage collection can reclaim.' },
  },
});

export const ADMIN = group({
  name: 'admin',
  about: 'install-wide operations',
  flags: {
    data: { type: 'string', arg: 'DIR', help: 'the install\'s data directory (default ./data)' },
    config: { type: 'string', arg: 'FILE', help: 'the server\'s config file' },
    'to-meta': { type: 'string', arg: 'postgres://USER:PASS@HOST:PORT/DB', help: 'the destination database (empty: CREATE DATABASE …)' },
    'to-store': { type: 'string', arg: 's3://BUCKET/PREFIX?endpoint=URL&region=R', help: 'the destination bucket (it must exist)' },
  },
  subs: {
    migrate: {
      flags: ['data', 'config', 'to-meta!', 'to-store!'], local: true,
      about: 'Move a single-box install (SQLite + the local store under --data) to PostgreSQL + S3. Stop its server first.',
      notes: 'The destination database must be empty (CREATE DATABASE …); the bucket must exist (S3 credentials: '
        + 'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Chunks, then layers and indexes, then the metadata rows '
        + 'are copied, each skipping what the destination already has: after an interruption, run the same '
        + 'command again and it carries on. At the end every row is compared on both sides and every version\'s '
        + 'chunks are read back from the bucket against their ids. Deltas are not copied (servers rebuild them). '
        + 'Progress goes to stderr, the summary (or with --json one JSON object) to stdout. '
        + 'Then start each server with --meta and --store (and a data directory of its own for its cache).',
    },
  },
});

export const KEY = group({
  name: 'key',
  about: 'the server\'s version-signing key (endpoints verify every version they sync to)',
  flags: {
    'trust-out': { type: 'string', arg: 'FILE', help: 'also write the trust file for boot stages there (npm run build:initramfs embeds it as /etc/deskfuse/trust.json)' },
  },
  subs: {
    show: { flags: ['trust-out'], about: 'The current key id, the key chain (one endorsement per rotation) and the trust file.' },
    rotate: {
      flags: ['trust-out'],
      about: 'Sign with a new key from now on, endorsed by the current one: endpoints that trust an older key accept it through the chain and record it on their disk. Versions signed before keep their signatures.',
    },
  },
});

/** In the order `deskfuse --help` shows them. */
export const GROUPS = [SERVER, IMAGE, REF, DESKTOP, AGENT, ENDPOINT, VDI, TOKEN, KEY, STORE, ADMIN] as const;
