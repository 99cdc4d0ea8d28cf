// Type-checked (not run) in the scratch project: the package's types reach a TypeScript
// consumer, and they are real (each @ts-expect-error line must be an error).
import { type Asset, AssetService, AssetServiceError, type CallOptions, Status, jsonValue } from "@asset-service/client";

export async function summary(svc: AssetService, id: string, options: CallOptions = { timeoutMs: 5_000 }): Promise<string> {
  const asset: Asset = await svc.getAsset(id, options);
  const made = await svc.createValueAsset({ label: "s.json", value: jsonValue({ of: asset.id }) });
  for await (const ev of svc.watch({ assetIds: [made.id] }, { resumeWithinMs: 10_000 })) void ev.revision;
  try {
    await svc.deleteAsset(made.id);
  } catch (err) {
    if (err instanceof AssetServiceError && err.code === Status.PERMISSION_DENIED) return err.details;
    throw err;
  }
  // @ts-expect-error an asset id is a string
  await svc.getAsset(42);
  // @ts-expect-error no such option
  await svc.readAsset(id, { offest: 1 });
  return `${asset.label} ${asset.sizeBytes}`;
}
