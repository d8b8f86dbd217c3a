import type { Extent } from './transmission.js';

/**
 * The policy the NBD server runs on (CONVENTIONS: one small interface): which exports exist, who may
 * open them, and their bytes. The server (server.ts) knows the protocol and nothing about images or
 * sessions; deskfuse's exports (src/vdi/exports.ts) and the tests' RAM exports implement this.
 *
 * The server checks ranges, read-only and block-size rules before it calls an export, so an export
 * only sees requests that are valid for it. Calls may run concurrently (the server pipelines); a flush
 * starts only after the writes received before it have settled.
 *
 * Errors from the data calls become NBD errnos (server.ts): DeskfuseError codes by a small table
 * (DF_ERR_BAD_REQUEST → EINVAL, DF_ERR_FORBIDDEN etc. → EPERM), system ENOSPC/EDQUOT/EFBIG → ENOSPC,
 * EROFS → EPERM, anything else EIO (logged with the request). A DeskfuseError's message reaches the
 * client; other messages do not.
 */
export interface NbdExport {
  /** Name for logs and NBD_INFO_NAME: never carries a secret. */
  readonly name: string;
  readonly description: string;
  /** Size in bytes (a multiple of `minimumBlock`). */
  readonly size: number;
  readonly readOnly: boolean;
  /**
   * NBD_FLAG_CAN_MULTI_CONN (proto.md "Transmission flags"): the client may open several connections
   * to this export, and a FLUSH on any of them covers every write completed on all of them (an
   * immutable export; a writable one whose connections share one store and one flush).
   */
  readonly multiConn?: boolean;
  /**
   * Optional: this connection may be served from one of the server's worker threads (server.ts
   * `threads`) once the handshake is done. `data` (structured-cloneable) rebuilds the export there;
   * `call` answers what the thread's copy asks the main thread (e.g. where a chunk is cached).
   * Undefined: served on the main thread.
   */
  handoff?(): NbdHandoff | undefined;
  /** NBD_INFO_BLOCK_SIZE (proto.md "Block size constraints"): minimum, preferred, maximum payload. */
  readonly blockSize: { minimum: number; preferred: number; maximum: number };
  /** The bytes of [offset, offset+length): one buffer or pieces in order whose lengths add up to `length`. */
  read(offset: number, length: number): Promise<Buffer | Buffer[]>;
  /**
   * Optional, faster: the same bytes written into `out` (out.length = the read's length). The server
   * then reuses its reply buffers instead of allocating one per read. Returning nothing (not a
   * promise) means `out` is already filled: the reply goes out at once, with no promise in between.
   */
  readInto?(offset: number, out: Buffer): Promise<void> | void;
  /** Write; with `fua` durable before it resolves (NBD_CMD_FLAG_FUA). Only on writable exports. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** NBD_CMD_WRITE_ZEROES (and TRIM, which deskfuse also reads back as zeros). */
  zero(offset: number, length: number, fua: boolean): Promise<void>;
  /** Everything written before is durable when this resolves (NBD_CMD_FLUSH). */
  flush(): Promise<void>;
  /** `base:allocation` extents covering at least the first byte of [offset, offset+length), in order. */
  extents(offset: number, length: number): Promise<Extent[]> | Extent[];
  /**
   * The connection that opened this export ended: `clean` after NBD_CMD_DISC (everything the client
   * sent was answered), else the socket dropped or the server is stopping. `wrote`: any write, zero or
   * trim was done on this connection. Called exactly once, after every other call on this export has
   * settled; an export opened for NBD_OPT_INFO is closed at once with {clean: true, wrote: false}.
   */
  close(how: { clean: boolean; wrote: boolean }): Promise<void>;
}

export interface NbdExportEntry {
  name: string;
  description: string;
}

export interface NbdOpenContext {
  /** Client address:port, for logs and leases. */
  remote: string;
  /** NBD_OPT_INFO opens to describe and closes at once; NBD_OPT_GO / EXPORT_NAME opens to serve. */
  purpose: 'info' | 'serve';
}

/**
 * Export names and access. Errors carry deskfuse codes; the server maps them to option replies:
 * DF_ERR_NBD_EXPORT_UNKNOWN → NBD_REP_ERR_UNKNOWN, DF_ERR_UNAUTHORIZED / DF_ERR_FORBIDDEN /
 * DF_ERR_TOKEN_EXPIRED → NBD_REP_ERR_POLICY, DF_ERR_BAD_REQUEST → NBD_REP_ERR_INVALID, others →
 * NBD_REP_ERR_UNKNOWN (logged as an error), carrying a DeskfuseError's message or else a generic one.
 * NBD_OPT_EXPORT_NAME has no error reply: any refusal closes the connection (proto.md).
 */
export interface NbdExportProvider {
  /** What NBD_OPT_LIST shows (it carries no credentials); throw DF_ERR_FORBIDDEN to refuse listing. */
  list(): Promise<NbdExportEntry[]>;
  open(name: string, ctx: NbdOpenContext): Promise<NbdExport>;
  /** A requested name as logs may show it (without the secret it may carry); default: as is. */
  logName?(name: string): string;
}

/** An export as a worker thread rebuilds it (NbdExport.handoff). */
export interface NbdHandoff {
  data: unknown;
  call(req: unknown): Promise<unknown>;
}
