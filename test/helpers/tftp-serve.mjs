// Runs deskfuse's TFTP server as its own process (inside a network namespace for the loss tests,
// or for the benchmark). Usage: node tftp-serve.mjs SERVER_JS ROOT [HOST] [PORT]
// Prints {"port":N} on stdout once listening; one JSON line per transfer event on stderr with
// TFTP_EVENTS=1; closes on SIGTERM or when stdin ends.
const [serverJs, root, host = '127.0.0.1', port = '0'] = process.argv.slice(2);
const { startTftp } = await import(serverJs);
const noop = () => {};
const log = { trace: noop, debug: noop, info: noop, warn: noop, error: (o, m) => console.error(m, o), child: () => log };
const onEvent = process.env.TFTP_EVENTS ? (e) => process.stderr.write(JSON.stringify(e) + '\n') : undefined;
const srv = await startTftp({ host, port: Number(port), root, log, onEvent });
process.stdout.write(JSON.stringify({ port: srv.port }) + '\n');
const stop = async () => { await srv.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
