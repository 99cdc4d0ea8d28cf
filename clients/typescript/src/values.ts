// Builders for the inline content of a VALUE asset (createValueAsset, fulfillAsset).
import type { Value } from "./gen/asset/v1/asset_service";
import { asBuffer } from "./validate";

/** UTF-8 text; a manifest writes it to a .txt file. */
export function textValue(text: string): Value {
  return { kind: { $case: "text", value: text } };
}

/** A JSON document (`JSON.stringify(document)`); a manifest writes it to a .json file. */
export function jsonValue(document: unknown): Value {
  const json = JSON.stringify(document);
  if (json === undefined) throw new TypeError(`jsonValue: ${typeof document} is not JSON`);
  return { kind: { $case: "json", value: json } };
}

/** Raw bytes; a manifest writes them to a .bin file. */
export function bytesValue(data: Uint8Array): Value {
  return { kind: { $case: "data", value: asBuffer(data) } };
}
