/**
 * The NBD protocol codec (NetworkBlockDevice/nbd doc/proto.md), pure: bytes in, value or DF_ERR_DECODE
 * out. Split by phase: constants.ts (the "Values" tables), handshake.ts (fixed newstyle negotiation),
 * transmission.ts (requests, simple replies, structured reply chunks) and framer.ts (stream framers).
 */
export * from './constants.js';
export * from './handshake.js';
export * from './transmission.js';
export * from './framer.js';
