export * from "./gen/asset/v1/asset_service";
export { AssetService, taskTokenSource } from "./client";
export type { CallOptions, TaskToken } from "./client";
export { keepLease } from "./lease";
export type { LeaseKeeper } from "./lease";
export { connection, isLoopbackTarget } from "./security";
export type { Connection, Security, TokenSource } from "./security";
export { promise, watch, runExample } from "./orchestrator";
export type { Config, Output, Result } from "./orchestrator";
