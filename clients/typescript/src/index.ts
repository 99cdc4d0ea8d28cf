export * from "./gen/asset/v1/asset_service";
export { AssetService, DataLossError, taskTokenSource } from "./client";
export type { CallOptions, ReadOptions, TaskToken } from "./client";
export { keepLease } from "./lease";
export type { LeaseKeeper } from "./lease";
export { connection, isLoopbackTarget } from "./security";
export type { Connection, Security, TokenSource } from "./security";
export { promise, watch, runExample } from "./orchestrator";
export type { Config, Output, Result } from "./orchestrator";
