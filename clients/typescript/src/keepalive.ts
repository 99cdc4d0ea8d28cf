// The gRPC keepalive every channel gets, so a call on a silently dead connection ends.
import type * as grpc from "@grpc/grpc-js";

/**
 * While a call is open (a watch idle for hours included), ping the server after this long
 * without a read. A connection that died without a word (a NAT or firewall forgot it, a
 * partition: no FIN or RST) is then dropped, the call fails UNAVAILABLE and a watch resumes
 * on a new connection instead of waiting forever. Not below 10 s: the server answers more
 * frequent pings with GOAWAY (too_many_pings).
 */
export const KEEPALIVE_TIME_MS = 30_000;
/** Drop the connection when a ping is not answered within this long. */
export const KEEPALIVE_TIMEOUT_MS = 20_000;

/** What AssetService sets (a test lowers it: a dead connection takes time + timeout to notice). */
export const keepalive = { timeMs: KEEPALIVE_TIME_MS, timeoutMs: KEEPALIVE_TIMEOUT_MS };

/** The channel options for `keepalive`; no pings while no call is open. */
export function keepaliveOptions(): grpc.ChannelOptions {
  return {
    "grpc.keepalive_time_ms": keepalive.timeMs,
    "grpc.keepalive_timeout_ms": keepalive.timeoutMs,
    "grpc.keepalive_permit_without_calls": 0,
  };
}
