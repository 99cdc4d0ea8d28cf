// A TCP proxy in front of a server whose connections a test can cut (a dropped connection).
import { type Socket, createConnection, createServer } from "node:net";

export interface Proxy {
  address: string;
  /** Destroys every open connection, both ways; new ones are accepted as before. */
  cut(): void;
  /** Cuts once this many bytes more have gone from the clients to the server; resolves then. */
  cutAfter(bytes: number): Promise<void>;
  close(): Promise<void>;
}

export async function tcpProxy(target: string): Promise<Proxy> {
  const at = target.lastIndexOf(":");
  const [host, port] = [target.slice(0, at), Number(target.slice(at + 1))];
  const open = new Set<Socket>();
  let upstreamBytes = 0;
  let trigger: { at: number; done: () => void } | undefined;
  const cut = (): void => {
    for (const s of open) s.destroy();
  };
  const server = createServer((client) => {
    const upstream = createConnection({ host, port });
    for (const s of [client, upstream]) {
      open.add(s);
      s.on("close", () => open.delete(s));
      s.on("error", () => {}); // a cut or refused side: the other is destroyed below
    }
    client.on("data", (chunk: Buffer) => {
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
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port: local } = server.address() as { port: number };
  return {
    address: `127.0.0.1:${local}`,
    cut,
    cutAfter: (bytes) => new Promise((done) => (trigger = { at: upstreamBytes + bytes, done })),
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
