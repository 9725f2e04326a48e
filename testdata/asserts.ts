// Copyright 2026 the ocspbot authors. MIT license.

/**
 * The assertions the test files share, as std's `assert` module names them,
 * on node:assert (JSR, where std lives, is out of reach here).
 *
 * @module
 */

import nodeAssert from "node:assert/strict";

export const assert: (condition: unknown, message?: string) => asserts condition = nodeAssert.ok;

export const assertEquals = (actual: unknown, expected: unknown, message?: string) =>
  nodeAssert.deepStrictEqual(actual, expected, message);

export const assertNotEquals = (actual: unknown, expected: unknown, message?: string) =>
  nodeAssert.notDeepStrictEqual(actual, expected, message);

export const assertMatch = (actual: string, expected: RegExp, message?: string) =>
  nodeAssert.match(actual, expected, message);
