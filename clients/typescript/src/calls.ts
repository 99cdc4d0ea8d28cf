// One place where calls are made: deadlines, cancellation by AbortSignal, errors typed.
import * as grpc from "@grpc/grpc-js";

import { AssetServiceError, Status as status, asCallError } from "./errors";
import { AssetServiceService } from "./gen/asset/v1/asset_service";

/** How one call is bounded. Every method of AssetService takes these as its last argument. */
export interface CallOptions {
  /** Aborting it cancels the call: it rejects with CANCELLED (a stream ends the same way). */
  signal?: AbortSignal;
  /** When the call fails with DEADLINE_EXCEEDED; wins over `timeoutMs`. */
  deadline?: Date;
  /**
   * The deadline, from now, in milliseconds (Infinity: none). Unset: the client's
   * `defaultTimeoutMs` for unary calls (see the README's table), none for streams.
   */
  timeoutMs?: number;
}

type Service = typeof AssetServiceService;
/** A method of the service by its ts-proto name, e.g. "getAsset". */
export type Method = keyof Service;
export type RequestOf<M extends Method> = Parameters<Service[M]["requestSerialize"]>[0];
export type ResponseOf<M extends Method> = ReturnType<Service[M]["responseDeserialize"]>;
type Kind<S extends boolean, R extends boolean> = {
  [M in Method]: Service[M]["requestStream"] extends S ? (Service[M]["responseStream"] extends R ? M : never) : never;
}[Method];
export type UnaryMethod = Kind<false, false>;
export type ServerStreamMethod = Kind<false, true>;
export type ClientStreamMethod = Kind<true, false>;

/** "GetAsset" for "getAsset": the name in errors, audit lines and the retry table. */
export function rpcName(method: Method): string {
  return AssetServiceService[method].path.split("/").pop() ?? method;
}

/** Makes the calls of one client on its grpc-js channel, and ends them all on `close()`. */
export class Caller {
  private readonly closing = new AbortController();

  constructor(
    readonly client: grpc.Client,
    /** Deadline of a unary call that sets none; Infinity: none. */
    readonly defaultTimeoutMs: number,
  ) {}

  /** Aborted by `close()`: waits between resumed streams end on it too. */
  get closed(): AbortSignal {
    return this.closing.signal;
  }

  /** Cancels every call in flight (CANCELLED), refuses new ones, closes the channel. */
  close(): void {
    this.closing.abort();
    this.client.close();
  }

  private refuseIfClosed(method: Method): void {
    if (this.closing.signal.aborted) throw new AssetServiceError(rpcName(method), status.CANCELLED, "the client was closed");
  }

  /** Cancels `call` when `signal` aborts or the client closes; the returned function lets go. */
  private bind(call: { cancel(): void }, signal: AbortSignal | undefined): () => void {
    const cancel = (): void => call.cancel();
    if (signal?.aborted) call.cancel();
    else signal?.addEventListener("abort", cancel, { once: true });
    this.closing.signal.addEventListener("abort", cancel, { once: true });
    return () => {
      signal?.removeEventListener("abort", cancel);
      this.closing.signal.removeEventListener("abort", cancel);
    };
  }

  private deadline(options: CallOptions, byDefault: boolean): grpc.Deadline | undefined {
    if (options.deadline) return options.deadline;
    const ms = options.timeoutMs ?? (byDefault ? this.defaultTimeoutMs : Infinity);
    return Number.isFinite(ms) ? new Date(Date.now() + ms) : undefined;
  }

  private grpcOptions(options: CallOptions, byDefault: boolean): grpc.CallOptions {
    const deadline = this.deadline(options, byDefault);
    return deadline === undefined ? {} : { deadline };
  }

  /**
   * One unary call. `byDefault` false: no deadline unless the caller gives one (GetManifest
   * with `wait`). Rejects with an AssetServiceError.
   */
  unary<M extends UnaryMethod>(method: M, request: RequestOf<M>, options: CallOptions, byDefault = true): Promise<ResponseOf<M>> {
    const def = AssetServiceService[method] as unknown as grpc.MethodDefinition<RequestOf<M>, ResponseOf<M>>;
    return new Promise((resolve, reject) => {
      this.refuseIfClosed(method);
      let release = (): void => {};
      const call = this.client.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        request,
        new grpc.Metadata(),
        this.grpcOptions(options, byDefault),
        (err, res) => {
          release();
          if (err) reject(asCallError(rpcName(method), err));
          else resolve(res as ResponseOf<M>);
        },
      );
      release = this.bind(call, options.signal);
    });
  }

  /**
   * The messages of one server-streaming call. Breaking out of the loop, aborting `signal`
   * or closing the client cancels the call; a failure throws an AssetServiceError.
   */
  async *serverStream<M extends ServerStreamMethod>(method: M, request: RequestOf<M>, options: CallOptions): AsyncGenerator<ResponseOf<M>> {
    const def = AssetServiceService[method] as unknown as grpc.MethodDefinition<RequestOf<M>, ResponseOf<M>>;
    this.refuseIfClosed(method);
    const call = this.client.makeServerStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      request,
      new grpc.Metadata(),
      this.grpcOptions(options, false),
    );
    const release = this.bind(call, options.signal);
    try {
      for await (const message of call) yield message as ResponseOf<M>;
    } catch (err) {
      throw asCallError(rpcName(method), err);
    } finally {
      release();
      call.cancel(); // a no-op once the call has ended
    }
  }

  /**
   * A client-streaming call: write with `send` (it waits while grpc-js's buffer is full),
   * then `finish()` half-closes and resolves with the response; `cancel()` abandons it.
   * Never leaves the call open: `send` rejects (and cancels) once the call has failed.
   */
  clientStream<M extends ClientStreamMethod>(method: M, options: CallOptions): ClientStream<RequestOf<M>, ResponseOf<M>> {
    const def = AssetServiceService[method] as unknown as grpc.MethodDefinition<RequestOf<M>, ResponseOf<M>>;
    const rpc = rpcName(method);
    this.refuseIfClosed(method);
    let settled = false;
    let release = (): void => {};
    let call!: grpc.ClientWritableStream<RequestOf<M>>;
    const response = new Promise<ResponseOf<M>>((resolve, reject) => {
      call = this.client.makeClientStreamRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        new grpc.Metadata(),
        this.grpcOptions(options, false),
        (err, res) => {
          settled = true;
          release();
          if (err) reject(asCallError(rpc, err));
          else resolve(res as ResponseOf<M>);
        },
      );
    });
    response.catch(() => {}); // observed through send() / finish()
    release = this.bind(call, options.signal);
    // A write after the call failed is dropped by grpc-js, silently: report the failure instead.
    const ended = (): Promise<never> => response.then(() => Promise.reject(new Error(`${rpc} answered before the upload ended`)));

    return {
      async send(message) {
        if (settled) return ended();
        if (call.write(message)) return;
        let onDrain: (() => void) | undefined;
        try {
          await Promise.race([
            new Promise<void>((resolve) => call.once("drain", (onDrain = resolve))),
            response.then(() => undefined),
          ]);
        } finally {
          if (onDrain) call.removeListener("drain", onDrain);
        }
        if (settled) return ended();
      },
      async finish() {
        call.end();
        return response;
      },
      async cancel() {
        call.cancel();
        await response.catch(() => {});
      },
    };
  }
}

/** The writing side of a client-streaming call; see `Caller.clientStream`. */
export interface ClientStream<Req, Res> {
  send(message: Req): Promise<void>;
  finish(): Promise<Res>;
  cancel(): Promise<void>;
}
