import type { Migration, Sql, SqlDialect } from './sql.js';

/**
 * The schema, as numbered steps both engines apply in order, each once (schema_migrations). A
 * database made before migrations existed (SQLite, CREATE TABLE IF NOT EXISTS at every start, columns
 * added later) is brought up by step 1, which is written to be a no-op on what is already there.
 * Add a step at the end; never change a shipped one.
 */
const V1_TABLES = [
  `CREATE TABLE IF NOT EXISTS images (
     name TEXT PRIMARY KEY, virtual_size BIGINT NOT NULL, chunk_size INTEGER NOT NULL,
     hash_alg TEXT NOT NULL, created_at TEXT NOT NULL, boot TEXT)`,
  `CREATE TABLE IF NOT EXISTS versions (
     image TEXT NOT NULL REFERENCES images(name), version INTEGER NOT NULL, parent INTEGER,
     layer_id TEXT NOT NULL, index_id TEXT NOT NULL, kind TEXT NOT NULL, author TEXT NOT NULL,
     message TEXT NOT NULL, created_at TEXT NOT NULL, chunks_changed INTEGER NOT NULL,
     chunks_total INTEGER NOT NULL, commit_key TEXT, landed_ref TEXT, landed_reason TEXT, PRIMARY KEY (image, version))`,
  `CREATE TABLE IF NOT EXISTS refs (
     image TEXT NOT NULL REFERENCES images(name), name TEXT NOT NULL, version INTEGER NOT NULL,
     updated_at TEXT NOT NULL, PRIMARY KEY (image, name))`,
  `CREATE TABLE IF NOT EXISTS ref_log (
     seq BIGINT PRIMARY KEY, image TEXT NOT NULL, ref TEXT NOT NULL, old_version INTEGER,
     new_version INTEGER NOT NULL, reason TEXT NOT NULL, author TEXT NOT NULL, at TEXT NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS ref_log_by_ref ON ref_log (image, ref, seq)`,
  `CREATE INDEX IF NOT EXISTS versions_by_commit_key ON versions (image, commit_key)`,
  `CREATE TABLE IF NOT EXISTS tokens (
     hash TEXT PRIMARY KEY, scope TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT, last_used_at TEXT)`,
  `CREATE TABLE IF NOT EXISTS desktops (
     name TEXT PRIMARY KEY, image TEXT NOT NULL REFERENCES images(name), mode TEXT NOT NULL,
     follows TEXT NOT NULL, created_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS leases (
     desktop TEXT PRIMARY KEY REFERENCES desktops(name), holder TEXT, fencing BIGINT NOT NULL,
     since TEXT NOT NULL, expires_at TEXT NOT NULL)`,
  // commit_requested: 0 = no order, else the request's time in epoch ms.
  `CREATE TABLE IF NOT EXISTS endpoints (
     id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, uuid TEXT, serial TEXT, state TEXT NOT NULL,
     desktop TEXT, mode TEXT NOT NULL, boot_method TEXT NOT NULL, firmware TEXT, disk TEXT NOT NULL,
     disk_version INTEGER, commit_requested BIGINT NOT NULL, last_seen TEXT, last_sync TEXT,
     created_at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS endpoint_macs (mac TEXT PRIMARY KEY, endpoint TEXT NOT NULL REFERENCES endpoints(id))`,
  `CREATE INDEX IF NOT EXISTS endpoint_macs_by_endpoint ON endpoint_macs (endpoint)`,
  `CREATE TABLE IF NOT EXISTS boot_tokens (
     hash TEXT PRIMARY KEY, endpoint TEXT NOT NULL, mac TEXT NOT NULL, action TEXT NOT NULL,
     created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT)`,
  `CREATE TABLE IF NOT EXISTS boot_events (
     seq BIGINT PRIMARY KEY, endpoint TEXT, mac TEXT NOT NULL, phase TEXT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL)`,
  `CREATE INDEX IF NOT EXISTS boot_events_by_endpoint ON boot_events (endpoint, seq)`,
  // The public keys of each endpoint's disk secret (src/endpoint/proof.ts): a table of its own, so
  // the endpoint rows the API lists never carry them.
  `CREATE TABLE IF NOT EXISTS endpoint_keys (
     endpoint TEXT PRIMARY KEY REFERENCES endpoints(id), key TEXT, pending_key TEXT, changed_at TEXT NOT NULL)`,
  // Where each endpoint last booted or reported from (commit requests are accepted from there only).
  `CREATE TABLE IF NOT EXISTS endpoint_addresses (endpoint TEXT PRIMARY KEY, ip TEXT NOT NULL, at TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS vdi_sessions (
     id TEXT PRIMARY KEY, desktop TEXT NOT NULL, image TEXT NOT NULL, base INTEGER NOT NULL, mode TEXT NOT NULL,
     holder TEXT NOT NULL, fencing BIGINT, secret_hash TEXT NOT NULL, auto_commit INTEGER NOT NULL, state TEXT NOT NULL,
     created_at TEXT NOT NULL, created_by TEXT NOT NULL, updated_at TEXT NOT NULL, last_connect_at TEXT,
     last_disconnect_at TEXT, last_disconnect TEXT, outcome TEXT, failure TEXT)`,
  `CREATE INDEX IF NOT EXISTS vdi_sessions_by_desktop ON vdi_sessions (desktop, created_at)`,
];

/** Columns SQLite databases from before migrations may lack (added by releases after a table shipped). */
const LEGACY_COLUMNS: Array<[string, string, string]> = [
  ['tokens', 'expires_at', 'TEXT'],
  ['tokens', 'last_used_at', 'TEXT'],
  ['versions', 'commit_key', 'TEXT'],
  ['versions', 'landed_ref', 'TEXT'],
  ['versions', 'landed_reason', 'TEXT'],
  ['images', 'boot', 'TEXT'],
  ['vdi_sessions', 'failure', 'TEXT'],
];

async function v1(q: Sql, dialect: SqlDialect): Promise<void> {
  if (dialect === 'sqlite') {
    // Existing tables keep their shape under CREATE … IF NOT EXISTS: add the columns they lack first.
    for (const [table, column, def] of LEGACY_COLUMNS) {
      const cols = await q.all(`PRAGMA table_info(${table})`);
      if (cols.length && !cols.some((c) => c.name === column)) await q.run(`ALTER TABLE ${table} ADD COLUMN ${column} ${def}`);
    }
  }
  for (const s of V1_TABLES) await q.run(s);
}

/**
 * VDI session ownership (several servers on one database): the server hosting the session's NBD
 * export and its address, the owner's heartbeat while a client is connected, the last checkpoint.
 */
async function v2(q: Sql): Promise<void> {
  for (const [column, def] of [['server', 'TEXT'], ['nbd_host', 'TEXT'], ['nbd_port', 'INTEGER'], ['heartbeat_at', 'TEXT'], ['checkpoint_layer', 'TEXT'], ['checkpoint_at', 'TEXT']]) {
    await q.run(`ALTER TABLE vdi_sessions ADD COLUMN ${column} ${def}`);
  }
}

/**
 * The full-mode DHCP pool, shared by every server on the boot LAN (src/meta/sql-dhcp.ts). expires: epoch ms.
 * (Number 2 is VDI session ownership, from another branch; ids need not be contiguous.)
 */
async function v3(q: Sql): Promise<void> {
  await q.run('CREATE TABLE IF NOT EXISTS dhcp_leases (ip TEXT PRIMARY KEY, mac TEXT NOT NULL, state TEXT, expires BIGINT)');
  await q.run('CREATE INDEX IF NOT EXISTS dhcp_leases_by_mac ON dhcp_leases (mac)');
}

/**
 * Retention (src/image/retention.ts): each image's override of the server's policy (a null column
 * takes the server's default), and ref deletions in the ref log (`deleted` 1: the ref was deleted at
 * `old_version`; `new_version` repeats it, the column being NOT NULL). Number 5 is garbage collection.
 */
async function v4(q: Sql): Promise<void> {
  await q.run('CREATE TABLE IF NOT EXISTS image_policies (image TEXT PRIMARY KEY, keep_last INTEGER, keep_days INTEGER, conflict_days INTEGER, updated_at TEXT NOT NULL)');
  await q.run('ALTER TABLE ref_log ADD COLUMN deleted INTEGER');
}

/**
 * Garbage collection of the stores (src/gc/gc.ts). (Number 4 is retention.)
 *   gc_lock     one row per lock name: who runs a GC (holder, run id) until when (expires, epoch ms),
 *               its phase and progress (JSON), the last finished run's result (JSON)
 *   gc_objects  objects a run found unreferenced and old (state 'candidate'), and those a sweep is
 *               removing right now ('deleting'): kind chunk|blob, id, size and mtime (epoch ms) when marked
 *   gc_holds    in-flight commits: a staged layer (and its chunks), its parent's index, that a commit is about to reference
 */
async function v5(q: Sql): Promise<void> {
  await q.run(`CREATE TABLE IF NOT EXISTS gc_lock (name TEXT PRIMARY KEY, holder TEXT, run TEXT, expires BIGINT NOT NULL,
     phase TEXT, progress TEXT, started_at TEXT, finished_at TEXT, result TEXT)`);
  await q.run(`CREATE TABLE IF NOT EXISTS gc_objects (kind TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, size BIGINT NOT NULL,
     mtime BIGINT NOT NULL, run TEXT NOT NULL, marked_at TEXT NOT NULL, PRIMARY KEY (kind, id))`);
  await q.run('CREATE TABLE IF NOT EXISTS gc_holds (id TEXT PRIMARY KEY, image TEXT NOT NULL, layer TEXT NOT NULL, parent_index TEXT, expires BIGINT NOT NULL)');
}

/** Boot events by MAC (the events of a MAC before its endpoint was known are read with the endpoint's). */
async function v6(q: Sql): Promise<void> {
  await q.run('CREATE INDEX IF NOT EXISTS boot_events_by_mac ON boot_events (mac, seq)');
}

/**
 * Signed versions (src/sign/statements.ts): each version's manifest as the server signed it at
 * commit (body: canonical JSON text; sig: base64 Ed25519), by the key `key_id`. Deleted with its version.
 */
async function v7(q: Sql): Promise<void> {
  await q.run(`CREATE TABLE IF NOT EXISTS version_manifests (image TEXT NOT NULL, version INTEGER NOT NULL, key_id TEXT NOT NULL,
     body TEXT NOT NULL, sig TEXT NOT NULL, PRIMARY KEY (image, version))`);
}

/**
 * The version-signing key of a site whose servers share one database (server/signing.ts): one row,
 * so every server signs with the same key and serves the same chain without copying files.
 */
async function v8(q: Sql): Promise<void> {
  await q.run('CREATE TABLE IF NOT EXISTS signing_key (id INTEGER PRIMARY KEY, key_pem TEXT NOT NULL, chain TEXT NOT NULL, updated_at TEXT NOT NULL)');
}

export const MIGRATIONS: readonly Migration[] = [
  { id: 1, name: 'images, desktops, tokens, endpoints, VDI sessions', up: v1 },
  { id: 2, name: 'VDI session ownership: server, NBD address, heartbeat, checkpoint', up: v2 },
  { id: 3, name: 'DHCP pool', up: v3 },
  { id: 4, name: 'retention: image policies, ref deletions in the ref log', up: v4 },
  { id: 5, name: 'garbage collection: lock, candidates, in-flight commit holds', up: v5 },
  { id: 6, name: 'boot events by MAC', up: v6 },
  { id: 7, name: 'signed version manifests', up: v7 },
  { id: 8, name: 'the shared version-signing key', up: v8 },
];
