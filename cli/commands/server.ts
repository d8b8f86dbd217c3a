import { runServer } from '../../server/main.js';
import { parse, type Io } from '../args.js';

export async function serverCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    data: { type: 'string' },
    meta: { type: 'string' },
    'server-name': { type: 'string' },
    listen: { type: 'string' },
    config: { type: 'string' },
    'log-level': { type: 'string' },
    'log-format': { type: 'string' },
    'metrics-listen': { type: 'string' },
    dhcp: { type: 'string' },
    interface: { type: 'string' },
    'dhcp-range': { type: 'string' },
    'tftp-listen': { type: 'string' },
    'public-url': { type: 'string' },
    'boot-dir': { type: 'string' },
    'auto-enrol': { type: 'string' },
    'no-ipv6-ra': { type: 'boolean', default: false },
    'nbd-listen': { type: 'string' },
    'nbd-anonymous-read': { type: 'boolean', default: false },
    store: { type: 'string' },
  });
  if (values.help) {
    io.out.write('deskfuse server [--data DIR] [--meta sqlite|postgres://…] [--server-name NAME] [--listen HOST:PORT] [--config FILE] [--log-level LEVEL]\n' +
      '                [--log-format auto|pretty|json] [--metrics-listen HOST:PORT|off]\n' +
      '                [--dhcp off|proxy|full --interface IF [--dhcp-range FIRST,LAST]] [--tftp-listen HOST:PORT|off]\n' +
      '                [--public-url URL] [--boot-dir DIR] [--auto-enrol off|on|DESKTOP] [--no-ipv6-ra]\n' +
      '                [--nbd-listen HOST[:PORT]|off] [--nbd-anonymous-read] [--store s3://BUCKET/PREFIX?endpoint=URL&region=R]\n' +
      '  defaults: --data ./data (env DESKFUSE_DATA), --listen 127.0.0.1:8080 (env DESKFUSE_LISTEN; 0.0.0.0:8080 serves the network)\n' +
      '  metadata: --meta sqlite (default: DIR/meta.sqlite, one server) or postgres://USER:PASS@HOST:PORT/DB (env DESKFUSE_META; several servers)\n' +
      '  --server-name NAME names this server among several (env DESKFUSE_SERVER_NAME; default: the host name): a VDI session\n' +
      '  lives on the server that made it\n' +
      '  network boot: --dhcp off (the site DHCP points PXE at us), proxy (PXE answers beside the site DHCP), full (address pool);\n' +
      '  with DHCP on, TFTP serves the iPXE binaries on 0.0.0.0:69 and IPv6 RAs (lifetime 0) spare iPXE its IPv6 wait;\n' +
      '  --public-url is how endpoints reach this server (default: the Host they used); --boot-dir holds vmlinuz + initrd.img\n' +
      '  (default initramfs/out, made by npm run build:initramfs)\n' +
      '  VDI: NBD on the --listen host, port 10809 (env DESKFUSE_NBD_LISTEN); export names carry a token\n' +
      '  (IMAGE@REF:TOKEN, session/ID:SECRET); --nbd-anonymous-read opens (and lists) image exports without one\n' +
      '  logs: --log-format pretty (readable lines; the default on a terminal) or json (the default otherwise); each HTTP\n' +
      '  request is one line at --log-level debug (at info only failed or slow ones); secrets are never logged\n' +
      '  --metrics-listen HOST:PORT serves GET /metrics there without a token (Prometheus on a trusted network; env\n' +
      '  DESKFUSE_METRICS_LISTEN); on the main address /metrics takes an admin or a metrics token (token create --scope metrics)\n' +
      '  config file (--config FILE, JSON): keys named as the flags in camelCase (data, listen, logLevel, …); see deploy/deskfuse.example.json\n' +
      '  store: chunks, layers and deltas under --data (default), or --store s3://… (env DESKFUSE_STORE) with credentials from\n' +
      '  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and a disk cache in <data>/store-cache (config file storeCacheMiB, default 4096)\n');
    return 0;
  }
  await runServer({
    ...(values.config ? { file: values.config } : {}),
    env: io.env,
    flags: {
      ...(values.data ? { data: values.data } : {}),
      ...(values.meta ? { meta: values.meta } : {}),
      ...(values['server-name'] ? { serverName: values['server-name'] } : {}),
      ...(values.listen ? { listen: values.listen } : {}),
      ...(values['log-level'] ? { logLevel: values['log-level'] } : {}),
      ...(values['log-format'] ? { logFormat: values['log-format'] } : {}),
      ...(values['metrics-listen'] ? { metricsListen: values['metrics-listen'] } : {}),
      ...(values.dhcp ? { dhcp: values.dhcp } : {}),
      ...(values.interface ? { interface: values.interface } : {}),
      ...(values['dhcp-range'] ? { dhcpRange: values['dhcp-range'] } : {}),
      ...(values['tftp-listen'] ? { tftpListen: values['tftp-listen'] } : {}),
      ...(values['public-url'] ? { publicUrl: values['public-url'] } : {}),
      ...(values['boot-dir'] ? { bootDir: values['boot-dir'] } : {}),
      ...(values['auto-enrol'] ? { autoEnrol: values['auto-enrol'] } : {}),
      ...(values['no-ipv6-ra'] ? { ipv6Ra: false } : {}),
      ...(values['nbd-listen'] ? { nbdListen: values['nbd-listen'] } : {}),
      ...(values['nbd-anonymous-read'] ? { nbdAnonymousRead: true } : {}),
      ...(values.store ? { store: values.store } : {}),
    },
  }, io.out);
  return 0;
}
