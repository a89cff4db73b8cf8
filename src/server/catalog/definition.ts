// A job's definition as the catalog stores it: checked when written and again when read, because the
// file may have been edited by hand or written by another version.
import type { JsonObject } from './json.js';

export interface JobDefinition {
  /** What the job backs up: VMs by name, folders by path, or disk images (or block devices) by path. */
  kind: 'vm' | 'folder' | 'disk';
  sources: string[];
  /** Repository location as the CLI takes it (its password is kept apart, encrypted). */
  repository: string;
  schedule?: { cron: string; timeZone?: string };
  tags?: string[];
  /** Keys no two running jobs may share (see scheduler.ts); default the sources. */
  resources?: string[];
  /** Further settings the catalog keeps but does not interpret. */
  options?: JsonObject;
}

/** Why `value` is not a job definition, or undefined when it is one. */
export function jobDefinitionProblem(value: unknown): string | undefined {
  if (!isObject(value)) return 'it is not an object';
  const known = new Set(['kind', 'sources', 'repository', 'schedule', 'tags', 'resources', 'options']);
  const unknown = Object.keys(value).filter((k) => !known.has(k));
  if (unknown.length > 0) return `it has unknown field(s) ${unknown.join(', ')}`;
  if (value.kind !== 'vm' && value.kind !== 'folder' && value.kind !== 'disk') return "kind must be 'vm', 'folder' or 'disk'";
  if (!isStringList(value.sources) || value.sources.length === 0) return 'sources must be a non-empty list of names';
  if (typeof value.repository !== 'string' || value.repository.trim() === '') return 'repository must be a non-empty string';
  if (value.schedule !== undefined) {
    const s = value.schedule;
    if (!isObject(s) || typeof s.cron !== 'string' || s.cron.trim() === '') return 'schedule.cron must be a non-empty string';
    if (s.timeZone !== undefined && typeof s.timeZone !== 'string') return 'schedule.timeZone must be a string';
    if (Object.keys(s).some((k) => k !== 'cron' && k !== 'timeZone')) return 'schedule has unknown fields';
  }
  if (value.tags !== undefined && !isStringList(value.tags)) return 'tags must be a list of strings';
  if (value.resources !== undefined && !isStringList(value.resources)) return 'resources must be a list of strings';
  if (value.options !== undefined && !isObject(value.options)) return 'options must be an object';
  return undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isStringList(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string' && x !== '');
}
