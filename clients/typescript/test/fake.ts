// An in-process grpc-js server of the AssetService contract whose handlers the test writes.
import * as grpc from "@grpc/grpc-js";

import type { Method } from "../src/calls";
import { AssetServiceService } from "../src/gen/asset/v1/asset_service";

export type Handlers = Partial<Record<Method, grpc.UntypedHandleCall>>;

export interface FakeServer {
  address: string;
  stop(): void;
}

/** Serves `handlers` on 127.0.0.1 (a free port); methods without one answer UNIMPLEMENTED. */
export async function fakeServer(handlers: Handlers, service: grpc.ServiceDefinition = AssetServiceService): Promise<FakeServer> {
  const server = new grpc.Server();
  server.addService(service, handlers as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { address: `127.0.0.1:${port}`, stop: () => server.forceShutdown() };
}

/** The contract with every message sent as empty bytes (all fields at their defaults). */
export const EMPTY_MESSAGES: grpc.ServiceDefinition = Object.fromEntries(
  Object.entries(AssetServiceService).map(([name, def]) => [
    name,
    {
      ...def,
      requestSerialize: () => Buffer.alloc(0),
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: () => Buffer.alloc(0),
      responseDeserialize: (b: Buffer) => b,
    },
  ]),
);

export const unavailable = (details: string): Partial<grpc.StatusObject> => ({ code: grpc.status.UNAVAILABLE, details });

/**
 * A handler for `method` that answers `first` to the first `failures` calls, OK after that,
 * counting calls in `counts[method]`.
 */
export function failingFirst(method: Method, failures: number, counts: Map<string, number>): grpc.UntypedHandleCall {
  const def = AssetServiceService[method];
  const attempt = (): boolean => {
    const n = (counts.get(method) ?? 0) + 1;
    counts.set(method, n);
    return n <= failures;
  };
  const error = unavailable(`${method} attempt failed (injected)`);
  if (def.requestStream) {
    return (call: grpc.ServerReadableStream<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const fail = attempt();
      call.on("data", () => {});
      call.on("end", () => (fail ? cb(error, null) : cb(null, {})));
    };
  }
  if (def.responseStream) {
    return (call: grpc.ServerWritableStream<unknown, unknown>) => {
      if (attempt()) call.emit("error", error);
      else call.end();
    };
  }
  return (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => (attempt() ? cb(error, null) : cb(null, {}));
}
