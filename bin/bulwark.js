#!/usr/bin/env -S node --max-semi-space-size=4 --heap-growing-percent=20
// Thin launcher: the compiled CLI lives in dist/ (npm run build). The flags above keep V8's heap near
// what is live: without them a backup of a tree of small files held 30-40 MB more, mostly garbage
// (docs/performance.md, Memory). Whatever starts the CLI itself reads them from this line
// (src/cli/launcher.ts).
import '../dist/cli/main.js';
