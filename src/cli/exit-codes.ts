// The one place where error codes become exit codes (listed in the README and in `bulwark --help`).
import type { ErrorCode } from '../util/errors.js';

export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  partial: 3,
  repositoryNotFound: 10,
  wrongPassword: 11,
  locked: 12,
  appendOnly: 13,
} as const;

export function exitCodeFor(code: ErrorCode): number {
  switch (code) {
    case 'usage':
      return EXIT.usage;
    case 'partial':
      return EXIT.partial;
    case 'repository-not-found':
      return EXIT.repositoryNotFound;
    case 'wrong-password':
      return EXIT.wrongPassword;
    case 'repository-locked':
      return EXIT.locked;
    case 'append-only':
      return EXIT.appendOnly;
    default:
      return EXIT.failed;
  }
}
