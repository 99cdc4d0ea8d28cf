// A TCP proxy in front of a server whose connections a test can cut (a dropped connection)
// or silence (a dead one that nobody closed).
import { type Socket, createConnection, createServer } from "node:net";

export interface Proxy {
  address: string;
  /** Destroys every open connection, both ways; new ones are accepted as before. */
  cut(): void;
  /** Cuts once this many bytes more have gone from the clients to the server; resolves then. */
  cutAfter(bytes: number): Promise<void>;
  /**
   * Silences every connection held now, as a NAT that forgot them: nothing is forwarded
   * either way (what arrives is read and dropped) and no socket is closed; new connections
   * pass as before. Returns how many it silenced.
   */
  blackhole(): number;
  close(): Promise<void>;
}

interface Held {
  client: Socket;
  upstream: Socket;
  silent: boolean;
}

export async function tcpProxy(target: string): Promise<Proxy> {
  const at = target.lastIndexOf(":");
  const [host, port] = [target.slice(0, at), Number(target.slice(at + 1))];
  const open = new Set<Socket>();
  const held = new Set<Held>();
  let upstreamBytes = 0;
  let trigger: { at: number; done: () => void } | undefined;
  const cut = (): void => {
    for (const s of open) s.destroy();
  };
  const server = createServer((client) => {
    const upstream = createConnection({ host, port });
    const pair: Held = { client, upstream, silent: false };
    held.add(pair);
    for (const s of [client, upstream]) {
      open.add(s);
      s.on("close", () => {
        open.delete(s);
        held.delete(pair);
      });
      s.on("error", () => {}); // a cut or refused side: the other is destroyed below
    }
    client.on("data", (chunk: Buffer) => {
      if (pair.silent) return;
      upstreamBytes += chunk.length;
      if (trigger && upstreamBytes >= trigger.at) {
        const { done } = trigger;
        trigger = undefined;
        cut();
        done();
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => pair.silent || upstream.destroy());
    upstream.on("close", () => pair.silent || client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port: local } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${local}`,
    cut,
    cutAfter: (bytes) => new Promise((done) => (trigger = { at: upstreamBytes + bytes, done })),
    blackhole: () => {
      const n = held.size;
      for (const pair of held) {
        pair.silent = true;
        pair.client.unpipe(pair.upstream);
        pair.upstream.unpipe(pair.client);
        pair.upstream.on("data", () => {}); // read on and drop, as the client side does
        pair.client.resume();
        pair.upstream.resume();
      }
      held.clear();
      return n;
    },
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
