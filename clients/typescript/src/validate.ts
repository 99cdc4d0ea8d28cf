// Argument checks: a wrong argument is a TypeError or RangeError naming it, before anything is sent.
//
// Without them a value of the wrong type reaches the protobuf encoder, and grpc-js reports
// the encoder's exception as INTERNAL "Request message serialization failure" (issue 19).

/** Checks `value` found at `path` (e.g. "request.tags[2]") and returns it, maybe normalized. */
export type Check<T = unknown> = (value: unknown, path: string) => T;

/** What `value` is, for a message: "a number (3)", "an object", "undefined". */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (Array.isArray(value)) return "an array";
  if (value instanceof Uint8Array) return "a Uint8Array";
  switch (typeof value) {
    case "string":
      return `a string (${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)})`;
    case "number":
    case "bigint":
    case "boolean":
      return `a ${typeof value} (${String(value)})`;
    case "object":
      return `an object (${(value as object).constructor?.name ?? "null prototype"})`;
    default:
      return `a ${typeof value}`;
  }
}

function wrongType(path: string, expected: string, value: unknown): TypeError {
  return new TypeError(`${path} must be ${expected}, got ${describe(value)}`);
}

export const string: Check<string> = (v, path) => {
  if (typeof v !== "string") throw wrongType(path, "a string", v);
  return v;
};

export const boolean: Check<boolean> = (v, path) => {
  if (typeof v !== "boolean") throw wrongType(path, "a boolean", v);
  return v;
};

export const finite: Check<number> = (v, path) => {
  if (typeof v !== "number") throw wrongType(path, "a number", v);
  if (!Number.isFinite(v)) throw new RangeError(`${path} must be a finite number, got ${v}`);
  return v;
};

/** A whole number from `min` to `max` (both within JavaScript's safe integers). */
export function integer(min: number, max: number): Check<number> {
  return (v, path) => {
    if (typeof v !== "number") throw wrongType(path, "a number", v);
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new RangeError(`${path} must be a whole number from ${min} to ${max}, got ${v}`);
    }
    return v;
  };
}

export const uint32 = integer(0, 0xffffffff);
export const int32 = integer(-0x80000000, 0x7fffffff);
/** int64 fields are JavaScript numbers here (ts-proto forceLong=number): up to 2^53 - 1. */
export const nonNegativeInt64 = integer(0, Number.MAX_SAFE_INTEGER);

/** Bytes, as a Buffer over the same memory (the generated code encodes Buffers). */
export const bytes: Check<Buffer> = (v, path) => {
  if (!(v instanceof Uint8Array)) throw wrongType(path, "a Buffer or Uint8Array", v);
  return asBuffer(v);
};

export function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

export function listOf<T>(item: Check<T>, max = Infinity): Check<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) throw wrongType(path, "an array", v);
    if (v.length > max) throw new RangeError(`${path} has ${v.length} entries, at most ${max} are allowed`);
    return v.map((x, i) => item(x, `${path}[${i}]`));
  };
}

export const strings = listOf(string);

/** A value of a ts-proto enum (a numeric enum object with reverse names). */
export function enumOf(e: Record<string, string | number>, name: string): Check<number> {
  const values = new Set(Object.values(e).filter((x): x is number => typeof x === "number" && x >= 0));
  return (v, path) => {
    if (typeof v !== "number") throw wrongType(path, `a ${name} (e.g. ${name}.${String(e[1] ?? "")})`, v);
    if (!values.has(v)) throw new RangeError(`${path} must be a ${name}, got ${v}`);
    return v;
  };
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** Any plain object (its keys are not checked). */
export const plainObject: Check<Record<string, unknown>> = (v, path) => {
  if (!isPlainObject(v)) throw wrongType(path, "a plain object", v);
  return v;
};

/**
 * A plain object whose fields each pass their check (absent and undefined fields are left
 * out); a field it does not know is a TypeError, so that a misspelt one is not silently
 * dropped.
 */
export function object<T = Record<string, unknown>>(fields: Record<string, Check>): Check<T> {
  return (v, path) => {
    if (!isPlainObject(v)) throw wrongType(path, "a plain object", v);
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(v)) {
      const check = fields[key];
      if (check === undefined) {
        throw new TypeError(`${path} has no field ${JSON.stringify(key)} (its fields: ${Object.keys(fields).join(", ")})`);
      }
      if (value !== undefined) out[key] = check(value, `${path}.${key}`);
    }
    return out as T;
  };
}

/** A ts-proto oneof: `{ $case: "text", value: ... }` with one of `cases`. */
export function oneof(cases: Record<string, Check>): Check<{ $case: string; value: unknown }> {
  const names = Object.keys(cases).map((c) => JSON.stringify(c)).join(", ");
  return (v, path) => {
    if (!isPlainObject(v) || typeof v.$case !== "string") {
      throw wrongType(path, `{ $case, value } with $case one of ${names}`, v);
    }
    const check = cases[v.$case];
    if (check === undefined) throw new TypeError(`${path}.$case must be one of ${names}, got ${JSON.stringify(v.$case)}`);
    for (const key of Object.keys(v)) {
      if (key !== "$case" && key !== "value") throw new TypeError(`${path} has no field ${JSON.stringify(key)} (only $case and value)`);
    }
    return { $case: v.$case, value: check(v.value, `${path}.value`) };
  };
}

/** A map<string, string>: a plain object of strings. */
export const stringMap: Check<Record<string, string>> = (v, path) => {
  if (!isPlainObject(v)) throw wrongType(path, "a plain object of strings", v);
  for (const [k, x] of Object.entries(v)) string(x, `${path}[${JSON.stringify(k)}]`);
  return v as Record<string, string>;
};

/** A google.protobuf.Struct: a plain object of JSON values. */
export const jsonObject: Check<Record<string, unknown>> = (v, path) => {
  if (!isPlainObject(v)) throw wrongType(path, "a plain object of JSON values", v);
  jsonValue(v, path);
  return v;
};

function jsonValue(v: unknown, path: string): void {
  if (v === null || typeof v === "string" || typeof v === "boolean") return;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new RangeError(`${path} must be a finite number, got ${v}`);
    return;
  }
  if (Array.isArray(v)) {
    v.forEach((x, i) => jsonValue(x, `${path}[${i}]`));
    return;
  }
  if (isPlainObject(v)) {
    for (const [k, x] of Object.entries(v)) jsonValue(x, `${path}.${k}`);
    return;
  }
  throw wrongType(path, "a JSON value (null, boolean, number, string, array, plain object)", v);
}

export const date: Check<Date> = (v, path) => {
  if (!(v instanceof Date)) throw wrongType(path, "a Date", v);
  if (Number.isNaN(v.getTime())) throw new RangeError(`${path} is an invalid Date`);
  return v;
};

export const abortSignal: Check<AbortSignal> = (v, path) => {
  if (!(v instanceof AbortSignal)) throw wrongType(path, "an AbortSignal", v);
  return v;
};

/** An optional argument: undefined stays undefined, anything else must pass `check`. */
export function optional<T>(check: Check<T>): Check<T | undefined> {
  return (v, path) => (v === undefined ? undefined : check(v, path));
}

/** A duration in milliseconds above zero; Infinity where `infinite` (no limit). */
export function positiveMs(infinite: boolean): Check<number> {
  return (v, path) => {
    if (typeof v !== "number") throw wrongType(path, "a number of milliseconds", v);
    if (Number.isNaN(v) || v <= 0 || (!infinite && !Number.isFinite(v))) {
      throw new RangeError(`${path} must be above 0 ms${infinite ? " (Infinity: no limit)" : " and finite"}, got ${v}`);
    }
    return v;
  };
}
