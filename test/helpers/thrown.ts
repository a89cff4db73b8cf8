// What a call threw, for tests that look at an error's type, code and message rather than only its text.

/** The error fn threw; fails the test when it returned instead. */
export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}
