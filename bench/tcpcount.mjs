// A byte-counting TCP relay for the benchmark (loopback only).
//
// usage: node bench/tcpcount.mjs LISTEN_PORT TARGET_PORT LOGFILE
//
// Relays 127.0.0.1:LISTEN_PORT -> 127.0.0.1:TARGET_PORT and, when a connection ends, appends one
// line "<bytes server->client> <bytes client->server>" to LOGFILE: the TCP payload in each
// direction, i.e. HTTP request line + headers + body and status line + headers + body, which is
// what peers.sh takes from nginx ($bytes_sent + $request_length). Prints "ready" once listening.
// Runs until killed (by PID).
import net from 'node:net';
import fs from 'node:fs';

const [listenPort, targetPort, logFile] = process.argv.slice(2);
if (!listenPort || !targetPort || !logFile) {
  console.error('usage: tcpcount.mjs LISTEN_PORT TARGET_PORT LOGFILE');
  process.exit(2);
}

const server = net.createServer({ noDelay: true }, (client) => {
  let down = 0;
  let up = 0;
  let logged = false;
  const upstream = net.connect({ host: '127.0.0.1', port: Number(targetPort), noDelay: true });
  const done = () => {
    if (logged) return;
    logged = true;
    fs.appendFileSync(logFile, `${down} ${up}\n`);
  };
  client.on('data', (b) => { up += b.length; });
  upstream.on('data', (b) => { down += b.length; });
  client.pipe(upstream);
  upstream.pipe(client);
  client.on('close', () => { upstream.destroy(); done(); });
  upstream.on('close', () => { client.destroy(); done(); });
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
});
server.listen(Number(listenPort), '127.0.0.1', () => console.log('ready'));
