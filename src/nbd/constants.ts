/**
 * NBD protocol constants, as data tables (NetworkBlockDevice/nbd doc/proto.md, "Values" and the
 * message sections it points to). Values are numbers on the wire; the *_NAME tables name them for logs
 * and golden files.
 */

/** proto.md "Newstyle negotiation": 'NBDMAGIC', then 'IHAVEOPT' (also the option request magic). */
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
/** proto.md "Fixed newstyle negotiation": option reply magic. */
export const REPLY_MAGIC = 0x3e889045565a9n;
/** proto.md "Request message", "Simple reply message", "Structured reply chunk message". */
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** proto.md "Handshake flags" (16 bits, server). */
export const HS_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
/** proto.md "Client flags" (32 bits). */
export const CLIENT_FLAG = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

/** proto.md "Transmission flags" (16 bits). */
export const TX_FLAG = {
  HAS_FLAGS: 1 << 0, READ_ONLY: 1 << 1, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3, ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5, SEND_WRITE_ZEROES: 1 << 6, SEND_DF: 1 << 7, CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9, SEND_CACHE: 1 << 10, SEND_FAST_ZERO: 1 << 11, BLOCK_STATUS_PAYLOAD: 1 << 12,
} as const;

/** proto.md "Option types". */
export const OPT = {
  EXPORT_NAME: 1, ABORT: 2, LIST: 3, PEEK_EXPORT: 4, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11,
} as const;

/** proto.md "Option reply types"; errors have bit 31 set. */
export const REP_ERR_BIT = 0x80000000;
export const REP = {
  ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR_BIT + 1, ERR_POLICY: REP_ERR_BIT + 2, ERR_INVALID: REP_ERR_BIT + 3, ERR_PLATFORM: REP_ERR_BIT + 4,
  ERR_TLS_REQD: REP_ERR_BIT + 5, ERR_UNKNOWN: REP_ERR_BIT + 6, ERR_SHUTDOWN: REP_ERR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR_BIT + 8, ERR_TOO_BIG: REP_ERR_BIT + 9, ERR_EXT_HEADER_REQD: REP_ERR_BIT + 10,
} as const;

/** proto.md "Option reply types", `NBD_REP_INFO`. */
export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** proto.md "Request types". */
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7, RESIZE: 8 } as const;
/** proto.md "Command flags". */
export const CMD_FLAG = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4, PAYLOAD_LEN: 1 << 5 } as const;

/** proto.md "Structured reply flags" and "Structured reply types"; error chunks have bit 15 set. */
export const REPLY_FLAG = { DONE: 1 << 0 } as const;
export const CHUNK_ERR_BIT = 0x8000;
export const CHUNK = {
  NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, BLOCK_STATUS_EXT: 6,
  ERROR: CHUNK_ERR_BIT + 1, ERROR_OFFSET: CHUNK_ERR_BIT + 2,
} as const;

/** proto.md "`base:allocation` metadata context". */
export const BASE_ALLOCATION = 'base:allocation';
export const STATE = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

/** proto.md "Error values". */
export const ERRNO = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** proto.md "Conventions": strings MUST be no longer than 4096 bytes. */
export const MAX_STRING = 4096;
/** proto.md "Size constraints": servers SHOULD accept payloads of at least 2^25 bytes. */
export const DEFAULT_MAX_PAYLOAD = 1 << 25;

const invert = (t: Record<string, number>): Record<number, string> => Object.fromEntries(Object.entries(t).map(([k, v]) => [v, k]));
export const OPT_NAME = invert(OPT);
export const REP_NAME = invert(REP);
export const INFO_NAME = invert(INFO);
export const CMD_NAME = invert(CMD);
export const CHUNK_NAME = invert(CHUNK);
export const ERRNO_NAME = invert(ERRNO);
