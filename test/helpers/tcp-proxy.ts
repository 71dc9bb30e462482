/**
 * A TCP proxy on 127.0.0.1 that forwards to a target and can be told to break connections,
 * to prove that clients retry: reset a connection as soon as it is accepted, reset it when
 * the client sends (a request), or cut the server's answer after a few bytes.
 */
import net from 'node:net';

export type FaultMode =
  /** accept the connection and reset it at once, before any byte */
  | 'reset-on-connect'
  /** reset the connection when the client sends data (also on kept-alive connections) */
  | 'reset-on-request'
  /** forward the request, then reset after the first `cutAfterBytes` bytes of the response */
  | 'cut-response'
  /** answer the request itself with an S3 "503 SlowDown" error (throttling) and close */
  | 'respond-503';

export interface ProxyStats {
  connections: number;
  faults: number;
  /** most client connections open at the same time */
  maxOpen: number;
}

export class TcpProxy {
  readonly stats: ProxyStats = { connections: 0, faults: 0, maxOpen: 0 };
  private open = 0;
  private server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private faultsLeft = 0;
  private mode: FaultMode = 'reset-on-connect';
  private cutAfterBytes = 100;
  private held = false;
  port = 0;

  private constructor(private readonly targetHost: string, private readonly targetPort: number) {
    this.server = net.createServer((client) => this.onConnection(client));
  }

  static async start(target: { host: string; port: number }): Promise<TcpProxy> {
    const p = new TcpProxy(target.host, target.port);
    await new Promise<void>((res, rej) => p.server.once('error', rej).listen(0, '127.0.0.1', () => res()));
    p.port = (p.server.address() as net.AddressInfo).port;
    return p;
  }

  /** A proxy for an http(s) URL; `url` is the proxied URL. */
  static async forUrl(target: string): Promise<TcpProxy & { url: string }> {
    const u = new URL(target);
    const port = Number(u.port || (u.protocol === 'https:' ? 443 : 80));
    const p = await TcpProxy.start({ host: u.hostname, port });
    u.host = `127.0.0.1:${p.port}`;
    return Object.assign(p, { url: u.toString().replace(/\/$/, '') });
  }

  /** The next `count` opportunities of `mode` fail. */
  failNext(count: number, mode: FaultMode, cutAfterBytes = 100): void {
    this.faultsLeft = count;
    this.mode = mode;
    this.cutAfterBytes = cutAfterBytes;
  }

  get pendingFaults(): number {
    return this.faultsLeft;
  }

  /**
   * Holds all traffic, both ways, on open and new connections (the kernel buffers it) until
   * release(): whatever the client does through the proxy is stopped at a known point.
   */
  hold(): void {
    this.held = true;
    for (const s of this.sockets) s.pause();
  }

  release(): void {
    this.held = false;
    for (const s of this.sockets) s.resume();
  }

  get holding(): boolean {
    return this.held;
  }

  /** Resets every open connection (kept-alive ones included). */
  dropAll(): void {
    for (const s of this.sockets) s.resetAndDestroy();
  }

  private takeFault(mode: FaultMode): boolean {
    if (this.faultsLeft <= 0 || this.mode !== mode) return false;
    this.faultsLeft--;
    this.stats.faults++;
    return true;
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    if (this.held) s.pause();
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => {});
  }

  private onConnection(client: net.Socket): void {
    this.stats.connections++;
    this.open++;
    this.stats.maxOpen = Math.max(this.stats.maxOpen, this.open);
    client.on('close', () => this.open--);
    this.track(client);
    if (this.takeFault('reset-on-connect')) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(this.targetPort, this.targetHost);
    this.track(upstream);
    const kill = () => {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    };
    let cutting = -1; // bytes of response still allowed through, -1 = no cut pending
    let answered = false; // the proxy answered itself: drop whatever the client still sends
    client.on('data', (d: Buffer) => {
      if (answered) return;
      if (this.takeFault('reset-on-request')) return kill();
      if (this.takeFault('respond-503')) {
        const body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';
        answered = true;
        client.end(
          `HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
        upstream.destroy();
        return;
      }
      if (cutting < 0 && this.takeFault('cut-response')) cutting = this.cutAfterBytes;
      if (!upstream.write(d)) {
        client.pause();
        upstream.once('drain', () => {
          if (!this.held) client.resume();
        });
      }
    });
    upstream.on('data', (d: Buffer) => {
      if (cutting >= 0) {
        if (d.length > cutting) {
          if (cutting > 0) client.write(d.subarray(0, cutting));
          cutting = -1;
          // let the partial answer reach the client before the reset
          setTimeout(kill, 20);
          upstream.pause();
          return;
        }
        cutting -= d.length;
      }
      if (!client.write(d)) {
        upstream.pause();
        client.once('drain', () => {
          if (!this.held) upstream.resume();
        });
      }
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => {
      if (!answered) client.end();
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => {
      if (!answered) client.destroy();
    });
    upstream.on('error', () => {
      if (!answered) client.resetAndDestroy();
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
