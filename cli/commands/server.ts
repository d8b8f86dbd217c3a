import { runServer } from '../../server/main.js';
import { parse, type Io } from '../args.js';

export async function serverCommand(args: string[], io: Io): Promise<number> {
  const { values } = parse(args, {
    data: { type: 'string' },
    listen: { type: 'string' },
    config: { type: 'string' },
    'log-level': { type: 'string' },
  });
  if (values.help) {
    io.out.write('deskfuse server [--data DIR] [--listen HOST:PORT] [--config FILE] [--log-level LEVEL]\n' +
      '  defaults: --data ./data (env DESKFUSE_DATA), --listen 127.0.0.1:8080 (env DESKFUSE_LISTEN; 0.0.0.0:8080 serves the network)\n');
    return 0;
  }
  await runServer({
    ...(values.config ? { file: values.config } : {}),
    env: io.env,
    flags: {
      ...(values.data ? { data: values.data } : {}),
      ...(values.listen ? { listen: values.listen } : {}),
      ...(values['log-level'] ? { logLevel: values['log-level'] } : {}),
    },
  }, io.out);
  return 0;
}
