import { runServer } from '../../server/main.js';
import { parseCommand, type Io } from '../args.js';
import { SERVER } from '../spec.js';

export async function serverCommand(args: string[], io: Io): Promise<number> {
  const p = parseCommand(SERVER, args, io);
  if (typeof p === 'number') return p;
  const { values } = p;
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
      ...(values['nbd-tls'] ? { nbdTls: values['nbd-tls'] } : {}),
      ...(values.store ? { store: values.store } : {}),
      ...(values.tls ? { tls: values.tls } : {}),
      ...(values['https-listen'] ? { httpsListen: values['https-listen'] } : {}),
    },
  }, io.out);
  return 0;
}
