/** The native binding as loaded, untyped: util/native.ts gives it its type. */
export declare function nativeBinding(): unknown;
