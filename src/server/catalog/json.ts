// JSON columns: what goes in must come back out equal, so values JSON would silently change (NaN,
// undefined, Dates, class instances) are refused on the way in rather than discovered on the way out.

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Why `value` is not plain JSON, or undefined when it is. */
export function jsonProblem(value: unknown, path = '$', depth = 0): string | undefined {
  if (depth > 64) return `${path} is nested too deeply`;
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return undefined;
  if (typeof value === 'number') return Number.isFinite(value) ? undefined : `${path} is not a finite number`;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const p = jsonProblem(value[i], `${path}[${i}]`, depth + 1);
      if (p) return p;
    }
    return undefined;
  }
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) return `${path} is not a plain object`;
    for (const [k, v] of Object.entries(value)) {
      const p = jsonProblem(v, `${path}.${k}`, depth + 1);
      if (p) return p;
    }
    return undefined;
  }
  return `${path} is a ${typeof value}, not JSON`;
}

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && jsonProblem(value) === undefined;
}
