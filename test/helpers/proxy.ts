import { Agent, createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the proxy does with one upstream response: pass it, replace its body, or cut it after `cut` bytes. */
export type ProxyAction = { body: Buffer } | { cut: number } | undefined;

export interface ProxyHooks {
  /** Called before a request is forwarded (e.g. to kill the upstream server at that moment). */
  onRequest?: (method: string, url: string) => void | Promise<void>;
  /** Called with each complete upstream response; the default passes it unchanged. */
  onResponse?: (info: { method: string; url: string; status: number; headers: IncomingHttpHeaders }, body: Buffer) => ProxyAction | Promise<ProxyAction>;
}

export interface TestProxy {
  url: string;
  /** Requests seen, as "METHOD /path". */
  seen: string[];
  hooks: ProxyHooks;
  close(): Promise<void>;
}

/**
 * A loopback HTTP proxy between the agent and the server for fault tests: it buffers each response
 * and lets a hook flip bytes in it or break the connection mid-body. An upstream that cannot be
 * reached makes the proxy drop the client's connection (as a dead server would).
 */
export async function startProxy(target: string, hooks: ProxyHooks = {}): Promise<TestProxy> {
  const up = new URL(target);
  const agent = new Agent({ keepAlive: true });
  const seen: string[] = [];
  const proxy: TestProxy = { url: '', seen, hooks, close: async () => {} };
  const server: Server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    seen.push(`${method} ${url.split('?')[0]}`);
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', async () => {
      try {
        await proxy.hooks.onRequest?.(method, url);
      } catch {
        res.socket?.destroy();
        return;
      }
      const headers = { ...req.headers, host: up.host };
      const fwd = request({ host: up.hostname, port: up.port, method, path: url, headers, agent }, (ures) => {
        const body: Buffer[] = [];
        ures.on('data', (d: Buffer) => body.push(d));
        ures.on('error', () => res.socket?.destroy());
        ures.on('end', async () => {
          const whole = Buffer.concat(body);
          let action: ProxyAction;
          try {
            action = await proxy.hooks.onResponse?.({ method, url, status: ures.statusCode ?? 0, headers: ures.headers }, whole);
          } catch {
            res.socket?.destroy();
            return;
          }
          const out = action && 'body' in action ? action.body : whole;
          const h: Record<string, string | string[]> = {};
          for (const [k, v] of Object.entries(ures.headers)) if (v !== undefined && k !== 'transfer-encoding' && k !== 'content-length' && k !== 'connection') h[k] = v;
          h['content-length'] = String(out.length);
          res.writeHead(ures.statusCode ?? 502, h);
          if (action && 'cut' in action) {
            // Send part of the body, then drop the connection: the client sees it break mid-body.
            res.write(out.subarray(0, action.cut), () => setTimeout(() => res.socket?.destroy(), 20));
            return;
          }
          res.end(out);
        });
      });
      fwd.on('error', () => res.socket?.destroy());
      fwd.end(Buffer.concat(parts));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  proxy.close = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    agent.destroy();
  };
  return proxy;
}
