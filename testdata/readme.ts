// Copyright 2026 the ocspbot authors. MIT license.

/**
 * The README as tested: the documentation a user reads (README.md and
 * docs/*.md), its fenced blocks by name, and its recipes, deploy hooks and
 * installed command moved under a test's own root.
 *
 * @module
 */

import * as path from "node:path";
import { BOT, BOT_PERMISSIONS, writeWithFolders } from "./testca.ts";

/**
 * The documentation a user reads, by path from the repository's root:
 * README.md, then docs/*.md in name order.
 */
export async function readmeFiles(): Promise<Map<string, string>> {
  const root = path.join(import.meta.dirname!, "..");
  const files = new Map([["README.md", await Deno.readTextFile(path.join(root, "README.md"))]]);
  const docs: string[] = [];
  try {
    for await (const entry of Deno.readDir(path.join(root, "docs"))) {
      if (entry.isFile && entry.name.endsWith(".md")) docs.push(`docs/${entry.name}`);
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  for (const name of docs.sort()) files.set(name, await Deno.readTextFile(path.join(root, name)));
  return files;
}

/**
 * The README's fenced blocks that tests use as they stand, by name, from
 * README.md and docs/*.md: a block after a `<!-- test: name -->` line, or
 * after the line naming the unit file it is (`/etc/systemd/system/<name>`).
 * What a user pastes is what is tested; a name given twice is an error.
 */
export async function readmeBlocks(): Promise<Map<string, string>> {
  const named =
    /(?:<!-- test: ([^>]+?) -->|^`\/etc\/systemd\/system\/([^`]+)`[^\n]*:)\n\n```\w*\n([\s\S]*?)```/gm;
  const blocks = new Map<string, string>();
  for (const [file, text] of await readmeFiles()) {
    for (const match of text.matchAll(named)) {
      const name = match[1] ?? match[2];
      if (blocks.has(name)) throw new Error(`The block "${name}" is named twice (${file})`);
      blocks.set(name, match[3]);
    }
  }
  return blocks;
}

/**
 * A README deploy hook (`<!-- test: hook <name> -->`) moved under `root` as
 * readmeRecipe() moves a recipe, with `systemctl reload <server>` touching
 * `<root>/reloaded-<server>` instead.
 */
export async function readmeHook(name: string, root: string): Promise<string> {
  const hook = (await readmeBlocks()).get(`hook ${name}`);
  if (hook === undefined) {
    throw new Error(`README.md and docs/*.md have no <!-- test: hook ${name} -->`);
  }
  return movedUnder(hook, root).replace(/systemctl reload ([\w.-]+)/g, `touch ${root}/reloaded-$1`);
}

/** Every absolute path in `text` moved under `root`. */
export function movedUnder(text: string, root: string): string {
  return text.replace(/(^|[\s[,:'"=])\/(?=[\w.])/gm, `$1${root}/`);
}

/**
 * An `ocspbot` command at `<root>/usr/local/bin/ocspbot`, as the README's
 * install makes one: the hooks call it by that path.
 */
export async function installBot(root: string): Promise<void> {
  // The hooks' callers may clear the environment: the module cache is named outright.
  const info = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).output();
  const denoDir = JSON.parse(new TextDecoder().decode(info.stdout)).denoDir;
  await writeWithFolders(
    path.join(root, "usr/local/bin/ocspbot"),
    `#!/bin/sh\nDENO_DIR='${denoDir}' exec '${Deno.execPath()}' run --quiet ${
      BOT_PERMISSIONS.join(" ")
    } '${BOT}' "$@"\n`,
  );
  await Deno.chmod(path.join(root, "usr/local/bin/ocspbot"), 0o755);
}

/**
 * A README recipe moved under `root`: every absolute path in it starts at
 * `root` instead, and `on_change: [systemctl, reload, <server>]` touches
 * `<root>/reloaded-<server>` instead of reloading a server of this machine.
 */
export async function readmeRecipe(name: string, root: string): Promise<string> {
  const recipe = (await readmeBlocks()).get(`recipe ${name}`);
  if (recipe === undefined) {
    throw new Error(`README.md and docs/*.md have no <!-- test: recipe ${name} -->`);
  }
  return movedUnder(recipe, root)
    .replace(
      /^on_change: \[systemctl, reload, ([\w.-]+)\]$/m,
      `on_change: [touch, ${root}/reloaded-$1]`,
    );
}
