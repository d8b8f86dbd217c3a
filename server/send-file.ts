import type { FileHandle } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyReply } from 'fastify';
import type { PackPlan } from '../src/chunk/store.js';
import { loadNative, type Native } from '../src/native/addon.js';

/** A reader that takes no bytes for this long loses its transfer (the socket is closed). */
export const SEND_IDLE_MS = 60_000;

/** Bodies sent by each path since the process started (tests, and a check that sendfile is in use). */
export const sendFileStats = { sendfile: 0, stream: 0, parts: 0 };

let native: Native | null | undefined;
function sender(): Native | null {
  if (native === undefined) {
    try {
      native = loadNative();
    } catch {
      native = null; // no addon (a source checkout not built): bodies go through the event loop
    }
  }
  return native;
}

type TcpSocket = Socket & { _handle?: { fd?: number } | null; encrypted?: boolean };

/** The socket's descriptor when a body can go out with sendfile(2): plain TCP (not TLS, not inject()). */
function plainFd(reply: FastifyReply): number | undefined {
  const sock = reply.raw.socket as TcpSocket | null;
  if (!sock || sock.encrypted || sock.destroyed) return undefined;
  const fd = sock._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Resolves once everything written to the socket so far (the headers) is in the kernel. */
function flushed(sock: Socket): Promise<void> {
  return new Promise((resolve, reject) => sock.write('', (err) => (err ? reject(err) : resolve())));
}

/**
 * Answer with a whole file (headers already set on `reply`), and close `fh` when done.
 *
 * Immutable bodies (deltas, the boot stage) go out with sendfile(2) on the addon's sender thread:
 * the event loop that DHCP, TFTP and NBD share never reads, copies or allocates the body, and a slow
 * reader costs nothing while it waits (nginx's `sendfile on`). Where that cannot be (TLS, inject(), no
 * addon) the file is streamed; HEAD gets the headers alone.
 */
export async function sendFile(reply: FastifyReply, fh: FileHandle, size: number): Promise<FastifyReply | undefined> {
  reply.header('content-length', size);
  if (reply.request.method === 'HEAD') {
    // Written here: Fastify's HEAD handling would read a stream to its end, or say length 0.
    await fh.close();
    reply.hijack();
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) reply.raw.setHeader(k, v);
    reply.raw.writeHead(reply.statusCode).end();
    return undefined;
  }
  const n = plainFd(reply) !== undefined ? sender() : null; // GET, or a POST answered with a file (a cached pack)
  if (!n) {
    const stream = fh.createReadStream({ highWaterMark: 1024 * 1024 }); // closes fh at its end
    sendFileStats.stream++;
    return reply.send(stream);
  }
  sendFileStats.sendfile++;
  try {
    await sendOnThread(reply, (fd, cb) => n.sendfile(fd, fh.fd, 0, size, SEND_IDLE_MS, cb));
  } catch (err) {
    reply.log.info({ err, size }, 'file transfer cut short');
  } finally {
    await fh.close();
  }
  return undefined;
}

/**
 * Headers (already set on `reply`) through Node, then the body on the sender thread; the response is
 * ended (keep-alive goes on) or, when the body was cut short, the connection destroyed and the error
 * thrown. `send` gets the socket's descriptor read in the same tick: the addon dups it before
 * anything can close the socket, so the bytes cannot reach a descriptor number reused by another connection.
 */
async function sendOnThread(reply: FastifyReply, send: (fd: number, cb: (err: NodeJS.ErrnoException | null, sent: number) => void) => void): Promise<void> {
  reply.hijack(); // the body bypasses Fastify; onResponse and the request log still run at 'finish'
  const res = reply.raw;
  try {
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v);
    res.writeHead(reply.statusCode);
    res.flushHeaders();
    await flushed(res.socket!);
    const fd = plainFd(reply);
    if (fd === undefined) throw Object.assign(new Error('the client left before the body'), { code: 'ECONNRESET' });
    await new Promise<number>((resolve, reject) => send(fd, (err, sent) => (err ? reject(err) : resolve(sent))));
    // The client may have had the whole body before this response ends here: a close() of the server
    // meanwhile found the connection busy and left it; once idle it must go, or close() waits for
    // the keep-alive timeout.
    const server = (res.socket as (Socket & { server?: Server }) | null)?.server;
    res.once('finish', () => { if (server && !server.listening) server.closeIdleConnections(); });
    res.end();
  } catch (err) {
    res.destroy();
    throw err;
  }
}

/** Whether a body can go out on the sender thread (plain TCP, addon loaded). */
export function canSendOnThread(reply: FastifyReply): boolean {
  return plainFd(reply) !== undefined && sender() !== null;
}

/**
 * Answer with a pack whose frames are a local store's files (headers already set on `reply`; only
 * when canSendOnThread(reply)): the record heads from `plan.meta`, each frame from its file, by the
 * sender thread (native sendPack). `onCut` hears why a body was cut short (ENOENT/ESTALE: a file was
 * gone or had changed; the agent retries).
 */
export async function sendPack(reply: FastifyReply, plan: PackPlan, onCut?: (err: NodeJS.ErrnoException) => void): Promise<undefined> {
  const n = sender()!;
  reply.header('content-length', plan.size);
  sendFileStats.parts++;
  try {
    await sendOnThread(reply, (fd, cb) => n.sendPack(fd, plan.meta, plan.root, SEND_IDLE_MS, cb));
  } catch (err) {
    reply.log.info({ err, size: plan.size }, 'transfer cut short');
    onCut?.(err as NodeJS.ErrnoException);
  }
  return undefined;
}

/**
 * Answer with a whole file the caller holds open (and keeps open until this resolves: the sender dups
 * `fd` at the call), on the sender thread; only when canSendOnThread(reply).
 */
export async function sendFd(reply: FastifyReply, fd: number, size: number): Promise<undefined> {
  const n = sender()!;
  reply.header('content-length', size);
  sendFileStats.sendfile++;
  try {
    await sendOnThread(reply, (sock, cb) => n.sendfile(sock, fd, 0, size, SEND_IDLE_MS, cb));
  } catch (err) {
    reply.log.info({ err, size }, 'file transfer cut short');
  }
  return undefined;
}

/** The sender closes the chunk files it keeps open (the store removed or quarantined some). */
export function forgetSentFiles(): void {
  sender()?.sendForget();
}

/** The sender thread's token bucket over every body it sends (0: no cap); false without the addon. */
export function setSendRate(bytesPerSecond: number): boolean {
  const n = sender();
  if (!n) return false;
  n.sendRate(Math.round(bytesPerSecond));
  return true;
}

/** What the sender thread did (metrics): bytes sent, times it waited for the bucket, the cap; undefined without the addon. */
export function sendRateStats(): { bytes: number; throttled: number; rate: number } | undefined {
  return sender()?.sendStats();
}
