import type { FileHandle } from 'node:fs/promises';
import type { Socket } from 'node:net';
import type { FastifyReply } from 'fastify';
import { loadNative, type Native } from '../src/native/addon.js';

/** A reader that takes no bytes for this long loses its transfer (the socket is closed). */
export const SEND_IDLE_MS = 60_000;

/** Bodies sent by each path since the process started (tests, and a check that sendfile is in use). */
export const sendFileStats = { sendfile: 0, stream: 0 };

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
  const n = reply.request.method === 'GET' && plainFd(reply) !== undefined ? sender() : null;
  if (!n) {
    const stream = fh.createReadStream({ highWaterMark: 1024 * 1024 }); // closes fh at its end
    sendFileStats.stream++;
    return reply.send(stream);
  }
  sendFileStats.sendfile++;
  reply.hijack(); // the body bypasses Fastify; onResponse and the request log still run at 'finish'
  const res = reply.raw;
  try {
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v);
    res.writeHead(reply.statusCode);
    res.flushHeaders();
    await flushed(res.socket!);
    // Read the descriptor again in the same tick as the call: the addon dups it before anything can
    // close the socket, so the bytes cannot reach a descriptor number reused by another connection.
    const fd = plainFd(reply);
    if (fd === undefined) throw Object.assign(new Error('the client left before the body'), { code: 'ECONNRESET' });
    await new Promise<number>((resolve, reject) => n.sendfile(fd, fh.fd, 0, size, SEND_IDLE_MS, (err, sent) => (err ? reject(err) : resolve(sent))));
    res.end();
  } catch (err) {
    reply.log.info({ err, size }, 'file transfer cut short');
    res.destroy();
  } finally {
    await fh.close();
  }
  return undefined;
}
